"""`features`: I3D Mixed_5c features to shards, against a direct forward pass of the same model."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import encode_jpeg
from wlasl_shards import shards, storage
from wlasl_shards.cli import main
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data, transforms
from wlasl_shards.train import features as feat
from wlasl_shards.train.features import FeaturesConfig, extract
from wlasl_shards.train.models import InceptionI3d

CROP = 32  # the test checkpoint's training crop
SIZE = 36  # frame height of the test datasets (width SIZE + 8: the centre crop has a margin both ways)
CLASSES = 3


def write_dataset(root: Path, layout: dict[str, list[list[int]]], codec: str = "npy",
                  corrupt: frozenset[str] = frozenset()) -> Path:
    """A dataset of generated frames: `layout` = split -> per shard, the frame counts of its
    videos. Video ids in `corrupt` get a broken frame member (JPEG) or a short array (npy)."""
    root.mkdir(parents=True, exist_ok=True)
    height, width = SIZE, SIZE + 8
    splits, n = {}, 0
    for split, shard_lengths in layout.items():
        records = []
        for s, lengths in enumerate(shard_lengths):
            name = shards.shard_name(split, s)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for count in lengths:
                    rng = np.random.default_rng(n)
                    base = rng.integers(0, 256, (1, height, width, 3))
                    motion = np.arange(count)[:, None, None, None] * rng.integers(1, 9, (1, 1, width, 3))
                    clip = ((base + motion) % 256).astype(np.uint8)
                    video_id = f"{split}.{n:03d}"  # a dot: keys differ from ids
                    if codec == "jpeg":
                        blobs = [encode_jpeg(f, 95) for f in clip]
                        if video_id in corrupt:
                            blobs[-1] = b"\xff\xd8 not a jpeg"
                        blob, offsets = shards.pack_jpegs(blobs)
                        fmeta = shards.frames_meta("jpeg", count, height, width, offsets)
                    else:
                        fmeta = shards.frames_meta("npy", count, height, width, None)
                        blob = shards.encode_npy(clip[:-1] if video_id in corrupt else clip)
                    meta = {"video_id": video_id, "gloss": f"g{n % CLASSES}", "label": n % CLASSES, "split": split,
                            "num_frames": count, "frames": fmeta}
                    for mname, mblob in shards.sample_members(shards.sample_key(video_id), meta, blob):
                        tar.addfile(shards.tar_member(mname, len(mblob)), io.BytesIO(mblob))
                    n += 1
            raw = (root / name).read_bytes()
            records.append(shards.ShardRecord(name, len(lengths), sum(lengths), len(raw),
                                              hashlib.sha256(raw).hexdigest()).to_json())
        splits[split] = {"samples": sum(r["samples"] for r in records), "shards": records}
    index = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION, "tool_version": "test",
             "classes": [f"g{c}" for c in range(CLASSES)], "splits": splits, "crop_resolved": "center",
             "params": {"fps": 25.0, "size": SIZE, "crop": "center", "bbox_margin": 0.1, "codec": codec,
                        "jpeg_qscale": 3, "apply_frame_range": False}}
    (root / shards.INDEX_NAME).write_text(json.dumps(index))
    return root


# Lengths around I3D's minimum (9) and the time stride (8): T' = 2, 2, 3, 2, 3 ...
LAYOUT = {"test": [[5, 9, 17], [12, 16]], "val": [[9, 17]]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("feat_npy"), LAYOUT)


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("feat_jpeg"), {"test": [[3, 17, 10]]}, codec="jpeg")


@pytest.fixture(scope="module")
def ours(tmp_path_factory, dataset) -> Path:
    """A checkpoint in the format `train` writes (random weights, random BN statistics)."""
    torch.manual_seed(0)
    model = InceptionI3d(CLASSES)
    with torch.no_grad():  # BatchNorm in eval mode is then not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = ckpt_io.make(model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1),
                      epoch=0, step=0, best=None, config={"crop_size": CROP, "clip_len": 8, "dropout": 0.5},
                      classes=[f"g{c}" for c in range(CLASSES)],
                      preprocessing=ckpt_io.preprocessing_params(storage.load_index(dataset)))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    ckpt_io.save(path, ck)
    return path


def config(ckpt: Path, dataset: Path, out: Path, **kw) -> FeaturesConfig:
    return FeaturesConfig(checkpoint=str(ckpt), shards=str(dataset), out=str(out), device="cpu",
                          **{"num_workers": 0, "progress": False, **kw})


@pytest.fixture(scope="module")
def first(ours, dataset, tmp_path_factory) -> tuple[Path, dict]:
    """(OUT, index) of one run over every split of `dataset` with default settings (read-only)."""
    out = tmp_path_factory.mktemp("first") / "out"
    return out, extract(config(ours, dataset, out))


def read_shard(path: Path) -> dict[str, dict]:
    with open(path, "rb") as f:
        return {s["__key__"]: s for s in shards.read_samples(f)}


def load_npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def direct_features(model: InceptionI3d, sample: dict, crop: int) -> np.ndarray:
    """(T', 1024): the input sample decoded with the contract's function, the eval transform,
    one forward of model.features, averaged over space."""
    frames = shards.decode_frames(sample)
    clip = transforms.eval_crop(frames[transforms.eval_indices(len(frames))], crop)
    x = transforms.to_model_input(torch.from_numpy(clip)[None])
    with torch.no_grad():
        return model.features(x).mean(dim=(3, 4))[0].T.numpy()


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.tar"))}


# ------------------------------------------------------------------------------------ the maths


def test_time_steps_follow_the_model(ours):
    assert [feat.time_steps(t) for t in (1, 8, 9, 16, 17, 24, 25, 64)] == [2, 2, 2, 2, 3, 3, 4, 8]
    assert feat.time_steps(3, min_frames=1) == 1
    with pytest.raises(ValueError, match="num_frames must be >= 1, got 0"):
        feat.time_steps(0)
    model = InceptionI3d(CLASSES).eval()
    for t in (9, 16, 17, 25):
        with torch.no_grad():
            got = feat.clip_features(model, torch.zeros(1, t, CROP, CROP, 3, dtype=torch.uint8), torch.device("cpu"))
        assert got.shape == (1, feat.time_steps(t), 1024) and got.dtype == torch.float32


def test_spatial_mean_averages_space_per_time_step():
    act = torch.arange(2 * 3 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2, 2)
    got = feat.spatial_mean(act)
    assert got.shape == (2, 2, 3)
    assert got[1, 0, 2].item() == act[1, 2, 0].mean().item() == 41.5
    with pytest.raises(ValueError, match=r"expected \(B, C, t, h, w\) activations, got \(2, 3\)"):
        feat.spatial_mean(torch.zeros(2, 3))


# -------------------------------------------------------------------------------------- extract


@pytest.mark.parametrize("which", ["npy", "jpeg"])
def test_features_equal_a_direct_forward(which, ours, dataset, jpeg_dataset, first, tmp_path):
    if which == "npy":
        src, (out, index) = dataset, first
    else:
        src, out = jpeg_dataset, tmp_path / "out"
        index = extract(config(ours, src, out))
    model = feat.load_feature_model(ours, torch.device("cpu"))[0]
    source = storage.load_index(src)
    assert index["format"] == feat.FEATURES_FORMAT and index["layer"] == "Mixed_5c" and index["dims"] == 1024
    assert index["checkpoint"]["kind"] == "training" and index["settings"]["crop_size"] == CROP
    assert index["checkpoint"]["sha256"] == hashlib.sha256(ours.read_bytes()).hexdigest()
    assert index["source"]["classes"] == source["classes"]
    assert set(index["splits"]) == set(source["splits"])
    seen = 0
    for split, entry in source["splits"].items():
        out_entry = index["splits"][split]
        assert out_entry["samples"] == entry["samples"] and out_entry["skipped"] == 0
        for rec_in, rec in zip(entry["shards"], out_entry["shards"], strict=True):
            path = out / rec["name"]
            assert rec["name"] == rec_in["name"] and rec["source_sha256"] == rec_in["sha256"]
            assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert rec["bytes"] == path.stat().st_size
            inputs, outputs = read_shard(src / rec_in["name"]), read_shard(path)
            assert list(outputs) == list(inputs)  # same keys, same order
            steps = 0
            for key, sample in inputs.items():
                meta, got = json.loads(sample["json"]), outputs[key]
                f, mean = load_npy(got[feat.EXT_FEATURES]), load_npy(got[feat.EXT_MEAN])
                t_out = math.ceil(max(meta["frames"]["count"], 9) / 8)
                assert f.shape == (t_out, 1024) and f.dtype == np.float32
                assert mean.shape == (1024,) and mean.dtype == np.float32
                np.testing.assert_array_equal(mean, f.mean(axis=0, dtype=np.float32))
                np.testing.assert_allclose(f, direct_features(model, sample, CROP), rtol=1e-5, atol=1e-6)
                assert np.abs(f).max() > 0
                out_meta = json.loads(got["json"])
                assert {k: v for k, v in meta.items() if k != "frames"} == \
                       {k: v for k, v in out_meta.items() if k != "features"}
                assert out_meta["features"] == {
                    "layer": "Mixed_5c", "dims": 1024, "crop_size": CROP, "checkpoint": "best.pt",
                    "checkpoint_sha256": index["checkpoint"]["sha256"], "source_frames": meta["frames"]["count"],
                    "eval_frames": max(meta["frames"]["count"], 9), "shape": [t_out, 1024]}
                assert got["cls"] == sample["cls"]
                steps += t_out
                seen += 1
            assert rec["steps"] == steps
    assert seen == sum(e["samples"] for e in source["splits"].values())
    # webdataset's own tar grouping sees one sample per video with these members
    [part] = data.shard_parts(out, "test", {"splits": index["splits"]})[:1]
    raw = list(data.read_parts([part], data.SkipCounter(0)))
    assert {k for k in raw[0] if not k.startswith("__")} == {"features.npy", "mean.npy", "cls", "json"}
    assert json.loads((out / feat.FEATURES_INDEX).read_text()) == index


def test_two_runs_give_identical_bytes(ours, dataset, first, tmp_path):
    """Same inputs, same bytes: with and without loader processes (which read shards concurrently)."""
    out, index = first
    again = extract(config(ours, dataset, tmp_path / "again", num_workers=2))
    assert again == index
    assert shard_bytes(tmp_path / "again") == shard_bytes(out) and len(shard_bytes(out)) == 3


def test_kinetics_state_dict_is_accepted(dataset, tmp_path):
    torch.manual_seed(1)
    kinetics = InceptionI3d(400).eval()
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(kinetics.state_dict(), path)
    index = extract(config(path, dataset, tmp_path / "out", splits=("val",)))
    assert index["checkpoint"] == {"name": "rgb_imagenet.pt", "sha256": storage.sha256(path)[0], "kind": "state_dict"}
    assert index["settings"]["crop_size"] == SIZE  # min(224, the dataset's frame size)
    assert list(index["splits"]) == ["val"]
    inputs = read_shard(dataset / "val" / "shard-000000.tar")
    outputs = read_shard(tmp_path / "out" / "val" / "shard-000000.tar")
    for key, sample in inputs.items():
        np.testing.assert_allclose(load_npy(outputs[key][feat.EXT_FEATURES]), direct_features(kinetics, sample, SIZE),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="crop_size 48 is larger than the frames of .* \\(size 36\\)"):
        extract(config(path, dataset, tmp_path / "out2", crop_size=48))


def test_batches_pad_and_cut_back_to_each_videos_steps(ours, dataset, first, tmp_path):
    out, one = first
    three = extract(config(ours, dataset, tmp_path / "three", splits=("test",), batch_size=3))
    assert three["settings"]["batch_size"] == 3
    steps = [r["steps"] for r in one["splits"]["test"]["shards"]]
    assert [r["steps"] for r in three["splits"]["test"]["shards"]] == steps
    for shard in ("test/shard-000000.tar", "test/shard-000001.tar"):
        a, b = read_shard(out / shard), read_shard(tmp_path / "three" / shard)
        assert list(a) == list(b)
        # Batches are runs of 3 in shard order (a shard's last batch may be short); the longest
        # video of a batch is not padded, so its features are the batch-1 ones.
        for start in range(0, len(a), 3):
            keys = list(a)[start:start + 3]
            frames = {k: json.loads(a[k]["json"])["features"]["eval_frames"] for k in keys}
            for k in keys:
                fa, fb = load_npy(a[k][feat.EXT_FEATURES]), load_npy(b[k][feat.EXT_FEATURES])
                assert fa.shape == fb.shape
                np.testing.assert_array_equal(load_npy(b[k][feat.EXT_MEAN]), fb.mean(axis=0, dtype=np.float32))
                if frames[k] == max(frames.values()):
                    np.testing.assert_allclose(fb, fa, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------- resume


def test_resume_computes_only_what_is_missing(ours, dataset, first, tmp_path, monkeypatch):
    computed = []
    real = feat.clip_features

    def counting(model, clips, device, *arch_and_input):
        computed.append(len(clips))
        return real(model, clips, device, *arch_and_input)

    monkeypatch.setattr(feat, "clip_features", counting)
    out = tmp_path / "out"
    test_only = extract(config(ours, dataset, out, splits=("test",)))
    assert list(test_only["splits"]) == ["test"] and sum(computed) == 5
    original = shard_bytes(out)

    # An interrupted shard: gone, with a partial .tmp left behind.
    (out / "test" / "shard-000001.tar").unlink()
    (out / "test" / "shard-000001.tar.tmp").write_bytes(b"partial")
    computed.clear()
    only_val = extract(config(ours, dataset, out, splits=("val",)))
    assert sum(computed) == 2
    assert list(only_val["splits"]) == ["val"]  # test is not complete, so not listed

    kept = (out / "test" / "shard-000000.tar").stat()
    val = out / "val" / "shard-000000.tar"
    val_bytes = val.read_bytes()
    val.write_bytes(val_bytes[:-1] + b"x")  # a finished shard changed on disk: made again
    computed.clear()
    second = extract(config(ours, dataset, out))
    assert sum(computed) == 2 + 2  # test's shard-000001 and val, not test's shard-000000
    now = (out / "test" / "shard-000000.tar").stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert not (out / "test" / "shard-000001.tar.tmp").exists()
    assert shard_bytes(out) == {**original, "val/shard-000000.tar": val_bytes}
    assert second == first[1]  # as if made in one go

    computed.clear()
    assert extract(config(ours, dataset, out)) == second and computed == []


def test_other_settings_need_overwrite(ours, dataset, tmp_path):
    out = tmp_path / "out"
    extract(config(ours, dataset, out, splits=("val",)))
    with pytest.raises(ValueError, match=r"holds features made with other settings \(crop_size: 32 there vs 24\)"):
        extract(config(ours, dataset, out, splits=("val",), crop_size=24))
    index = extract(config(ours, dataset, out, splits=("val",), crop_size=24, overwrite=True))
    assert index["settings"]["crop_size"] == 24
    sample = read_shard(out / "val" / "shard-000000.tar")["val_005"]
    assert json.loads(sample["json"])["features"]["crop_size"] == 24


# ------------------------------------------------------------------------------------ bad input


def test_a_bad_sample_is_skipped_and_reported(ours, tmp_path):
    src = write_dataset(tmp_path / "src", {"test": [[10, 12, 11]]}, codec="jpeg", corrupt=frozenset({"test.001"}))
    index = extract(config(ours, src, tmp_path / "out"))
    [rec] = index["splits"]["test"]["shards"]
    assert (rec["samples"], rec["skipped"], index["splits"]["test"]["skipped"]) == (2, 1, 1)
    assert "test_001" in rec["skip_reasons"][0]
    assert list(read_shard(tmp_path / "out" / rec["name"])) == ["test_000", "test_002"]


def test_a_short_input_shard_stops_the_run(ours, tmp_path):
    src = write_dataset(tmp_path / "src", {"test": [[10, 12]], "val": [[9]]})
    index = json.loads((src / "dataset.json").read_text())
    index["splits"]["test"]["shards"][0]["samples"] = 3  # dataset.json promises more than the shard holds
    (src / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(data.DataError, match="test/shard-000000.tar gave 2 samples, dataset.json lists 3"):
        extract(config(ours, src, tmp_path / "out", splits=("test",)))
    assert not (tmp_path / "out" / "test" / "shard-000000.tar").exists()


def test_bad_arguments(ours, dataset, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        extract(config(ours, dataset, tmp_path / "o", batch_size=0))
    with pytest.raises(ValueError, match="device must be one of"):
        FeaturesConfig("c", "s", "o", device="tpu").check()
    with pytest.raises(ValueError, match="no split 'train'"):
        extract(config(ours, dataset, tmp_path / "o", splits=("train",)))
    with pytest.raises(ValueError, match="holds a dataset"):
        extract(config(ours, dataset, dataset))
    bad = tmp_path / "not_i3d.pt"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match=f"checkpoint {bad} does not fit InceptionI3d.*or an I3D state_dict"):
        extract(config(bad, dataset, tmp_path / "o"))


# ------------------------------------------------------------------------------------------ CLI


def test_cli_round_trip_and_errors(ours, npy_shards, tmp_path):
    out = tmp_path / "features"
    res = CliRunner().invoke(main, ["features", str(ours), str(npy_shards), str(out), "--split", "val",
                                    "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    assert "val: 4 videos in 1 shards" in res.output and f"wrote {out / 'features.json'}" in res.output
    index = json.loads((out / "features.json").read_text())
    assert list(index["splits"]) == ["val"] and index["settings"]["crop_size"] == CROP
    assert index["settings"]["batch_size"] == 2
    outputs = read_shard(out / "val" / "shard-000000.tar")
    assert list(outputs) == list(read_shard(npy_shards / "val" / "shard-000000.tar"))
    for sample in outputs.values():
        assert load_npy(sample[feat.EXT_FEATURES]).shape == (2, 1024)  # 10 frames -> 2 steps

    missing = tmp_path / "missing.pt"
    res = CliRunner().invoke(main, ["features", str(missing), str(npy_shards), str(out)])
    assert res.exit_code == 2
    assert res.output.strip() == f"Error: checkpoint {missing}: no such file"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint" * 8)
    res = CliRunner().invoke(main, ["features", str(junk), str(npy_shards), str(out), "--device", "cpu"])
    assert res.exit_code == 2 and f"Error: checkpoint {junk}: not a loadable PyTorch checkpoint" in res.output
    assert len(res.output.strip().splitlines()) == 1
