"""`inspect`'s sample picking and drawing on shards with bad samples (issue 12 item 16): skipped and counted."""

from __future__ import annotations

import json

import pytest

from tests.train.handmade import make_dataset
from wlasl_shards import inspect as insp
from wlasl_shards import storage


def test_bad_samples_are_skipped_and_counted_when_picking_and_drawing(tmp_path):
    # 1: metadata not JSON, 3: JPEG data zeros (decodes to nothing), 4: no .cls member
    root = make_dataset(tmp_path / "ds", {"train": [6, 2]}, bad={1: "json", 3: "jpeg", 4: "no-cls"})
    truncated = root / "train" / "shard-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[:2500])  # inside its first sample
    index = storage.load_index(root)
    skipped = insp.Skipped()
    picked = list(insp.first_samples(root, index, 8, "train", skipped))
    assert [json.loads(s["json"])["label"] for s in picked] == [0, 2, 3, 5]
    assert skipped.count == 3
    reasons = "\n".join(skipped.reasons)
    assert "shard-000000.tar: sample #1" in reasons and "JSONDecodeError" in reasons
    assert "sample #4" in reasons and "missing member .cls" in reasons
    assert "shard-000001.tar: sample #0 onwards" in reasons
    assert skipped.line().startswith("skipped 3 bad sample(s) (first: ")
    sheet = insp.contact_sheet(picked, thumb=16, skipped=skipped)
    assert sheet.size[1] == 3 * 16 and skipped.count == 4  # the undecodable sample has no row
    frames = insp.gif_frames(picked, 25.0, thumb=16, skipped=skipped)
    assert frames and skipped.count == 5 and "sample v003_mp4" in skipped.reasons[-1]


def test_nothing_usable_is_one_error_naming_what_was_skipped(tmp_path):
    root = make_dataset(tmp_path / "ds", {"train": [3]}, bad={0: "json", 1: "json", 2: "no-cls"})
    with pytest.raises(ValueError, match=r"no usable sample in split 'train': skipped 3 bad sample\(s\)"):
        list(insp.first_samples(root, storage.load_index(root), 4))
    many = make_dataset(tmp_path / "many", {"train": [25]}, bad={i: "json" for i in range(25)})
    with pytest.raises(ValueError, match="21 bad samples in a row"):
        list(insp.first_samples(many, storage.load_index(many), 4))
    good = make_dataset(tmp_path / "good", {"train": [2]}, bad={0: "jpeg", 1: "jpeg"})
    picked = list(insp.first_samples(good, storage.load_index(good), 2))
    with pytest.raises(ValueError, match="no sample to draw a GIF of: skipped 2 bad sample"):
        insp.gif_frames(picked, 25.0)


def test_the_inspect_command_draws_past_bad_samples_and_says_how_many(tmp_path):
    from click.testing import CliRunner

    from wlasl_shards.cli import main

    root = make_dataset(tmp_path / "ds", {"train": [6]}, bad={1: "json", 3: "jpeg"})
    sheet, gif = tmp_path / "sheet.png", tmp_path / "s.gif"
    result = CliRunner().invoke(main, ["inspect", str(root), "--sheet", str(sheet), "--gif", str(gif),
                                       "--samples", "6", "--split", "train"])
    assert result.exit_code == 0, result.output
    # 6 samples asked for, 5 picked (the bad JSON passed over), 4 drawn (sample 3 does not decode).
    assert f"wrote {sheet} (4 samples)" in result.output
    assert "skipped 2 bad sample(s) (first: " in result.output and "JSONDecodeError" in result.output
    assert sheet.stat().st_size > 0 and gif.stat().st_size > 0
