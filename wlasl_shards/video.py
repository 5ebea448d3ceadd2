"""ffmpeg: find the binary, probe a file, decode it to fixed-rate, fixed-size RGB frames.

Used by `preprocess` (build, synth) and by `train` (predict), so both see identical pixels.
ffmpeg always runs as an argument list (ffmpeg-python builds it), never through a shell.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

log = logging.getLogger(__name__)

FFMPEG_ENV = "WLASL_SHARDS_FFMPEG"


class VideoError(Exception):
    """A video could not be converted; the message is the reason that goes into the index."""


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """Path of the ffmpeg to run: $WLASL_SHARDS_FFMPEG, else the system one, else imageio-ffmpeg's."""
    explicit = os.environ.get(FFMPEG_ENV)
    if explicit:
        if not shutil.which(explicit):
            raise RuntimeError(f"${FFMPEG_ENV} points to {explicit!r}, which is not an executable")
        return explicit
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            pass
    raise RuntimeError(
        "no ffmpeg found: install one (apt-get install ffmpeg) or `pip install imageio-ffmpeg`, "
        f"or set ${FFMPEG_ENV} to its path"
    )
