"""Pure clip transforms: exact indices, exact pixels, exact normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wlasl_shards.train import transforms as tf


def ramp(t: int = 2, h: int = 5, w: int = 7) -> np.ndarray:
    """(t, h, w, 3) uint8 whose value says where it is: 105*t + 21*y + 3*x + c (< 256 for the defaults)."""
    return np.arange(t * h * w * 3, dtype=np.uint8).reshape(t, h, w, 3)


# ----------------------------------------------------------------------------------- indices


def test_train_window_is_consecutive_and_reaches_both_ends():
    starts = set()
    for seed in range(300):
        idx = tf.train_window(20, 8, np.random.default_rng(seed))
        assert idx.dtype == np.int64 and idx.shape == (8,)
        np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + 8))
        starts.add(int(idx[0]))
    assert starts == set(range(13))  # 0 .. 20 - 8, both ends included


def test_train_window_pads_short_videos_with_the_last_frame():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(tf.train_window(5, 8, rng), [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(tf.train_window(8, 8, rng), np.arange(8))
    np.testing.assert_array_equal(tf.train_window(1, 3, rng), [0, 0, 0])


def test_train_window_is_a_function_of_the_rng():
    a = tf.train_window(100, 8, np.random.default_rng(7))
    b = tf.train_window(100, 8, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_eval_indices():
    np.testing.assert_array_equal(tf.eval_indices(5, 9), [0, 1, 2, 3, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(tf.eval_indices(12, 9), np.arange(12))
    np.testing.assert_array_equal(tf.eval_indices(3, 1), [0, 1, 2])
    assert len(tf.eval_indices(4)) == tf.I3D_MIN_FRAMES


@pytest.mark.parametrize("call", [lambda: tf.train_window(0, 8, np.random.default_rng()),
                                  lambda: tf.train_window(5, 0, np.random.default_rng()),
                                  lambda: tf.eval_indices(0)])
def test_indices_reject_bad_lengths(call):
    with pytest.raises(ValueError, match="must be >= 1"):
        call()


# ------------------------------------------------------------------------------ crops and flips


def test_crop_takes_exact_pixels():
    frames = ramp()
    out = tf.crop(frames, 1, 2, 3)
    assert out.shape == (2, 3, 3, 3)
    # out[t, i, j, c] = frames[t, 1 + i, 2 + j, c] = 105 t + 21 (1 + i) + 3 (2 + j) + c
    assert out[0, 0, 0, 0] == 21 + 6
    assert out[1, 2, 2, 1] == 105 + 21 * 3 + 3 * 4 + 1
    np.testing.assert_array_equal(out, frames[:, 1:4, 2:5])


def test_center_crop_params():
    assert tf.center_crop_params(256, 256, 224) == (16, 16)
    assert tf.center_crop_params(6, 8, 4) == (1, 2)
    assert tf.center_crop_params(5, 4, 4) == (0, 0)  # odd margin: the extra row goes to the bottom
    assert tf.center_crop_params(24, 24, 24) == (0, 0)


def test_random_crop_params_cover_every_position():
    seen = {tf.random_crop_params(6, 8, 4, np.random.default_rng(s)) for s in range(400)}
    assert seen == {(y, x) for y in range(3) for x in range(5)}


@pytest.mark.parametrize("h, w, size", [(10, 30, 24), (30, 10, 24), (30, 30, 0)])
def test_crop_params_reject_crops_that_do_not_fit(h, w, size):
    with pytest.raises(ValueError, match="crop_size"):
        tf.center_crop_params(h, w, size)
    with pytest.raises(ValueError, match="crop_size"):
        tf.random_crop_params(h, w, size, np.random.default_rng())


def test_crop_rejects_out_of_bounds():
    with pytest.raises(ValueError, match="at \\(y=3, x=0\\)"):
        tf.crop(ramp(), 3, 0, 3)


def test_hflip_mirrors_columns_only():
    frames = ramp()
    out = tf.hflip(frames)
    assert out.shape == frames.shape
    for j in range(7):
        np.testing.assert_array_equal(out[:, :, j], frames[:, :, 6 - j])
    assert out[1, 4, 0, 2] == 105 + 21 * 4 + 3 * 6 + 2


def test_train_crop_follows_the_documented_draws():
    frames = (np.arange(2 * 6 * 8 * 3) % 251).astype(np.uint8).reshape(2, 6, 8, 3)  # 251: prime, no repeats nearby
    flipped = plain = 0
    for seed in range(40):
        ref = np.random.default_rng(seed)
        y, x = int(ref.integers(0, 3)), int(ref.integers(0, 5))
        flip = ref.random() < 0.5
        out = tf.train_crop(frames, 4, True, np.random.default_rng(seed))
        expected = frames[:, y:y + 4, x:x + 4]
        np.testing.assert_array_equal(out, expected[:, :, ::-1] if flip else expected)
        assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
        flipped += flip
        plain += not flip
    assert flipped and plain
    no_flip = tf.train_crop(frames, 4, False, np.random.default_rng(1))
    ref = np.random.default_rng(1)
    y, x = int(ref.integers(0, 3)), int(ref.integers(0, 5))
    np.testing.assert_array_equal(no_flip, frames[:, y:y + 4, x:x + 4])


def test_eval_crop_is_the_center_and_contiguous():
    frames = ramp()
    out = tf.eval_crop(frames, 3)
    np.testing.assert_array_equal(out, frames[:, 1:4, 2:5])
    assert out.flags["C_CONTIGUOUS"]


# ---------------------------------------------------------------------------------- model input


def test_to_model_input_layout_and_exact_values():
    batch = torch.zeros((2, 3, 4, 5, 3), dtype=torch.uint8)  # (B, T, H, W, RGB)
    batch[..., 1] = 255
    batch[..., 2] = 51
    batch[1, 2, 3, 4, 0] = 102
    out = tf.to_model_input(batch)
    assert out.shape == (2, 3, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    assert out[1, 0, 2, 3, 4].item() == pytest.approx(102 / 255 * 2 - 1, abs=1e-7)  # (b, c, t, y, x)
    out[1, 0, 2, 3, 4] = -1.0
    assert torch.all(out[:, 0] == -1.0)  # 0 -> -1 exactly
    assert torch.all(out[:, 1] == 1.0)  # 255 -> 1 exactly
    assert torch.all(out[:, 2] == torch.tensor(51.0) / 255 * 2 - 1)
    assert out[0, 2, 0, 0, 0].item() == pytest.approx(-0.6, abs=1e-6)


def test_to_model_input_matches_the_formula_on_every_value():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16, 1).expand(1, 1, 16, 16, 3)
    out = tf.to_model_input(values.contiguous())
    expected = torch.arange(256, dtype=torch.float32).reshape(16, 16) / 255 * 2 - 1
    for c in range(3):
        torch.testing.assert_close(out[0, c, 0], expected, rtol=0, atol=1e-7)
    assert out.min().item() == -1.0 and out.max().item() == 1.0


@pytest.mark.parametrize("bad", [torch.zeros((1, 2, 4, 4, 3)), torch.zeros((2, 4, 4, 3), dtype=torch.uint8),
                                 torch.zeros((1, 2, 4, 4, 1), dtype=torch.uint8)])
def test_to_model_input_rejects_other_inputs(bad):
    with pytest.raises(ValueError, match="uint8 batch"):
        tf.to_model_input(bad)
