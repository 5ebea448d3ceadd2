"""Stages, per-sample decode and bad data of the input pipeline, on tiny hand-made shards (`handmade`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import encode_jpeg
from tests.train.handmade import CLIP, CROP, FRAMES, SIZE, TRAIN_SIZES, cfg, eval_ids, make_dataset, train_labels
from wlasl_shards import shards, storage
from wlasl_shards.train import data, loader


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    """train: 5 shards (31 samples, labels 0..30); val: 3 shards (7 samples, labels 31..37)."""
    return make_dataset(tmp_path_factory.mktemp("ds"), {"train": TRAIN_SIZES, "val": [3, 1, 3]})


# ------------------------------------------------------------------------------ index and paths


def test_load_index_from_directory_or_file(ds):
    assert storage.load_index(ds)["splits"]["train"]["samples"] == 31
    assert storage.load_index(ds / shards.INDEX_NAME) == storage.load_index(str(ds))
    urls = data.shard_urls(ds / shards.INDEX_NAME, "val")
    assert urls == [str(ds / f"val/shard-00000{i}.tar") for i in range(3)]
    assert all(Path(u).is_file() for u in urls)
    assert data.shard_urls(f"file://{ds}", "val") == urls


def test_bad_dataset_arguments_say_what_is_wrong(ds, tmp_path):
    with pytest.raises(ValueError, match="no dataset.json at"):
        storage.load_index(tmp_path)
    with pytest.raises(ValueError, match="unsupported URL scheme ftp://"):
        storage.load_index("ftp://host/shards")
    with pytest.raises(ValueError, match="no split 'test' \\(has train, val\\)"):
        data.shard_urls(ds, "test")


def test_check_crop_against_the_frame_size():
    data.check_crop({"params": {"size": 32}}, 32, "here")
    data.check_crop({"params": {}}, 500, "here")  # no size recorded: each clip is checked when decoded
    with pytest.raises(ValueError, match="crop_size 33 is larger than the frames of here \\(size 32\\)"):
        data.check_crop({"params": {"size": 32}}, 33, "here")


# -------------------------------------------------------------------------------------- stages


def test_shuffle_buffer_is_a_seeded_permutation():
    items = list(range(50))
    a = list(data.shuffle_buffer(items, 10, random.Random(1)))
    assert sorted(a) == items and a != items
    assert a == list(data.shuffle_buffer(iter(items), 10, random.Random(1)))
    assert list(data.shuffle_buffer(items, 0, random.Random(1))) == items
    assert sorted(data.shuffle_buffer(items[:3], 10, random.Random(1))) == [0, 1, 2]


def test_map_samples_skips_counts_and_bounds_failures_in_a_row():
    def fn(s):
        if s["x"] < 0:
            raise ValueError("negative")
        return s["x"]

    errors = data.SkipCounter(max_consecutive=2)
    samples = [{"x": 1}, {"x": -1, "__url__": "u", "__key__": "k"}, {"x": -2}, {"x": 3}, {"x": -3}]
    assert list(data.map_samples(samples, fn, errors)) == [1, 3]
    assert errors.skipped == 3 and errors.reasons[0] == "u: k: ValueError: negative"
    with pytest.raises(data.DataError, match="3 bad samples in a row .*shard u, sample k"):
        list(data.map_samples([{"x": -1, "__url__": "u", "__key__": "k"}] * 3, fn, data.SkipCounter(2)))


# ------------------------------------------------------------------------------- one sample


def test_clips_are_windows_of_the_video(ds):
    """Flat frames hold label * 7 + t: a clip is 8 consecutive values of its own sample."""
    for clips, labels in loader.make_train_loader(ds, cfg(), 0):
        for clip, label in zip(clips, labels.tolist()):
            values = clip.float().mean(dim=(1, 2, 3)).round().long() - label * 7
            assert values.tolist() == list(range(values[0], values[0] + CLIP)), (label, values)
            assert 0 <= values[0] <= FRAMES - CLIP


def test_only_the_window_frames_are_decoded(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "a", {"train": [4, 4]})
    short = make_dataset(tmp_path / "b", {"train": [4, 4]}, count=5)  # padded: 5 distinct frames of 8
    opened = []
    real_decode = shards.simplejpeg.decode_jpeg
    monkeypatch.setattr(shards.simplejpeg, "decode_jpeg", lambda *a, **k: opened.append(1) or real_decode(*a, **k))
    assert len(train_labels(root, cfg())) == 8
    assert len(opened) == 8 * CLIP  # 8 of 20 frames per video
    opened.clear()
    assert len(train_labels(short, cfg())) == 8
    assert len(opened) == 8 * 5


def test_npy_shards_read_too(tmp_path):
    root = make_dataset(tmp_path, {"train": [3, 3]}, codec="npy")
    for clips, labels in loader.make_train_loader(root, cfg(flip=False), 0):
        for clip, label in zip(clips, labels.tolist()):
            start = int(clip[0, 0, 0, 0]) - label * 7  # npy is lossless: exact values
            expected = torch.tensor([label * 7 + start + t for t in range(CLIP)], dtype=torch.uint8)
            assert torch.equal(clip[:, 5, 7, 1], expected)


# ------------------------------------------------------------------------------------- bad data


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    bad = {1: "json", 3: "jpeg", 4: "no-cls", 6: "label"}
    root = make_dataset(tmp_path, {"train": [8], "val": [8]}, bad=bad)
    evals = loader.make_eval_loader(root, cfg(), "train")
    ids = [v for _, _, vids in evals for v in vids]
    assert ids == ["v000.mp4", "v002.mp4", "v005.mp4", "v007.mp4"]
    assert evals.skipped == 4
    reasons = "\n".join(evals.skip_reasons)
    for why in ("JSONDecodeError", "missing member .cls", "label b'seven' is not an integer", "v003"):
        assert why in reasons
    assert "train/shard-000000.tar" in reasons
    assert "skipped a bad sample" in caplog.text
    # Training replaces skipped samples: still exactly 4 full batches of 2, and thread workers report
    # their skips as worker processes do.
    for c in (cfg(), cfg(num_workers=2, worker_mode="thread")):
        train = loader.make_train_loader(root, c, 0)
        assert len([y for _, y in train]) == 4 and train.skipped >= 1
        assert all(0 <= label < 16 and label not in bad for _, y in train for label in y.tolist())


def test_a_truncated_shard_loses_its_tail_only(tmp_path):
    root = make_dataset(tmp_path, {"val": [3, 3]})
    shard = root / "val/shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2500])  # inside the first sample's frames
    evals = loader.make_eval_loader(root, cfg(), "val")
    ids = [v for _, _, vids in evals for v in vids]
    assert ids == ["v000.mp4", "v001.mp4", "v002.mp4"]
    assert evals.skipped == 1 and "val/shard-000001.tar" in evals.skip_reasons[0]


@pytest.mark.parametrize("workers, mode", [(0, "process"), (2, "process"), (2, "thread")])
def test_too_many_bad_samples_in_a_row_stop_naming_the_shard(tmp_path, workers, mode):
    root = make_dataset(tmp_path, {"train": [2, 6]}, bad={3: "json", 4: "jpeg", 5: "label", 6: "json"})
    with pytest.raises(data.DataError, match="4 bad samples in a row.*train/shard-000001.tar"):
        list(loader.make_eval_loader(root, cfg(max_consecutive_errors=3, num_workers=workers, worker_mode=mode),
                                   "train"))
    assert len(eval_ids(root, cfg(max_consecutive_errors=4), "train")) == 4


@pytest.mark.parametrize("codec", ["npy", "jpeg"])
def test_train_example_is_the_pure_transform_cropped_while_decoding(codec):
    """The fast path (crop inside decode_frames, mirror as BGR bytes reversed) equals
    transforms.train_crop on the decoded frames with the same rng draws, for every crop position and
    flip coin drawn."""
    from wlasl_shards.train import transforms

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, SIZE, SIZE + 8, 3), dtype=np.uint8)
    if codec == "npy":
        blob, offsets = shards.encode_npy(frames), None
    else:
        blob, offsets = shards.pack_jpegs([encode_jpeg(f, 90) for f in frames])
    meta = {"video_id": "x", "label": 1,
            "frames": shards.frames_meta(codec, 12, SIZE, SIZE + 8, offsets)}
    sample = {"json": json.dumps(meta).encode(), "cls": b"1", shards.EXT_FRAMES[codec]: blob}
    decoded = shards.decode_frames(sample)
    flipped = []
    for seed in range(8):
        got = data.train_example(sample, cfg(flip=True), 3, np.random.default_rng(seed))["clip"].numpy()
        ref = np.random.default_rng(seed)
        window = transforms.train_window(12, CLIP, ref)
        assert np.array_equal(got, transforms.train_crop(decoded[window], CROP, True, ref))
        ref = np.random.default_rng(seed)
        window = transforms.train_window(12, CLIP, ref)
        flipped.append(not np.array_equal(got, transforms.train_crop(decoded[window], CROP, False, ref)))
    assert any(flipped) and not all(flipped)
    bgr = shards.decode_frames(sample, [3, 0], (2, 5, 20), channels="BGR")
    assert np.array_equal(bgr, decoded[[3, 0], 2:22, 5:25, ::-1])
    with pytest.raises(ValueError, match="channels must be 'RGB' or 'BGR', got 'rgb'"):
        shards.decode_frames(sample, channels="rgb")


def test_samples_sharing_a_key_are_both_read_not_the_rest_of_the_shard_lost(tmp_path):
    """Shards from before build refused ids like `p.q` / `p_q` hold two adjacent samples of one key:
    webdataset's grouping raised and lost the rest of the shard; both are read now, and the rest."""
    import io
    import tarfile

    root = make_dataset(tmp_path, {"val": [4]})
    shard = root / "val/shard-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    first = members[0][0].partition(".")[0]
    renamed = [(first + "." + name.partition(".")[2] if i < 6 else name, blob) for i, (name, blob) in
               enumerate(members)]  # samples 0 and 1 now share sample 0's key
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in renamed:
            tar.addfile(shards.tar_member(name, len(blob)), io.BytesIO(blob))
    evals = loader.make_eval_loader(root, cfg(), "val")
    assert [v for _, _, vids in evals for v in vids] == ["v000.mp4", "v001.mp4", "v002.mp4", "v003.mp4"]
    assert evals.skipped == 0


def test_a_sample_claiming_millions_of_frames_is_skipped_before_allocating(tmp_path, monkeypatch):
    root = make_dataset(tmp_path, {"val": [2]})
    real = shards.check_frames_meta

    def lying(meta):  # what a hostile .json would say of sample 0
        if meta.get("video_id") == "v000.mp4":
            meta = {**meta, "frames": {**meta["frames"], "count": 30_000_000}}  # refused before the offsets
        return real(meta)

    monkeypatch.setattr(shards, "check_frames_meta", lying)
    evals = loader.make_eval_loader(root, cfg(), "val")
    assert [v for _, _, vids in evals for v in vids] == ["v001.mp4"]
    assert evals.skipped == 1 and "claims 30000000 frames of 32x32, more than" in evals.skip_reasons[0]
