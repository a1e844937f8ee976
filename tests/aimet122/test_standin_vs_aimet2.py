"""Keeps the AIMET 1.22.2 stand-in honest: its encoding math against aimet-torch 2.x on the same tensors.

Main suite (Python 3.11, aimet-torch 2.x installed). Imports only the stand-in's pure-numpy math
(tests/aimet122/standin/aimet122_tf_math.py, loaded from its file, so nothing shadows aimet_torch/aimet_common)
and aimet-torch 2.x's own quantizers (aimet_torch.quantization.affine.QuantizeDequantize with its min/max
encoding analyser). Settings as the project uses them: per-channel symmetric weights (bw 8 and 4),
per-tensor asymmetric activations (bw 8), min/max statistics.

Where the generations legitimately differ, the inputs of the agreement tests stay away from it, and each
difference has a test of its own that shows it:
  * rounding: 1.22.2 rounds halves away from zero, 2.x (torch.round) to even -> no value sits at a half level;
  * minimum range: 1.22.2 forces max >= min + 0.01, 2.x a minimum scale of about 1e-7 -> ranges are wide;
  * clamp order: 1.22.2 clamps x to [min, max] before scaling, 2.x clamps the level after rounding -> values
    stay inside the range;
  * symmetric grid: 1.22.2 takes delta = max(|min|, |max|) / 127 (bw 8), 2.x delta = max(max / 127, -min / 128)
    -> every weight channel has max >= |min| (then both give max / 127);
  * unsigned symmetric: 1.22.2 gives an all-non-negative channel an asymmetric grid [0, max], 2.x keeps it
    signed symmetric -> every weight channel has a negative value;
  * offset convention: 1.22.2's offset is the unsigned zero level (-128 for symmetric 8-bit), 2.x's symmetric
    offset is relative to qmin (0) -> compared as offset_1.22 == offset_2x + qmin.
"""
from __future__ import annotations

import math

import aimet122_overlay as ov  # pytest puts this test's folder on the path
import numpy as np
import pytest


def _aimet2_reason():
    try:
        from importlib.metadata import version
        found = version("aimet-torch")
    except Exception:  # noqa: BLE001 (not installed, or too old an interpreter for importlib.metadata)
        return "compares the AIMET 1.22.2 stand-in with aimet-torch 2.x, which is not installed here (current stack only)"
    if not found.startswith("2."):
        return "needs aimet-torch 2.x, found %s" % found
    return None


REASON = _aimet2_reason()
pytestmark = pytest.mark.aimet2  # needs aimet-torch 2.x: run by make test, left out of make test-legacy


@pytest.fixture(autouse=True)
def _aimet2_here():
    if REASON is not None:
        pytest.fail(REASON)

tfm = ov.load_math()
RTOL = 2e-6          # aimet-torch 2.x keeps min/max/scale in float32, the stand-in (as AIMET 1.22.2) in double


def _qdq2(shape, bw, symmetric, batches):
    """An aimet-torch 2.x QuantizeDequantize calibrated on ``batches`` (min/max analyser)."""
    import torch
    from aimet_torch.quantization.affine import QuantizeDequantize
    quantizer = QuantizeDequantize(shape=shape, bitwidth=bw, symmetric=symmetric)
    with torch.no_grad(), quantizer.compute_encodings():
        for batch in batches:
            quantizer(batch)
    return quantizer


def _f(tensor):
    return float(tensor.detach().reshape(-1)[0])


def _arr(tensor):
    return tensor.detach().double().reshape(-1).numpy()


def _weights(seed, shape):
    """Weights whose every output channel has a negative value and max >= |min| (see the module docstring)."""
    import torch
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.2
    for c in range(shape[0]):
        if w[c].max() < -w[c].min():
            w[c] = -w[c]
        assert w[c].min() < 0 <= w[c].max()
    return w


def _away_from_half(levels, margin=1e-3):
    frac = np.abs(levels - np.floor(levels) - 0.5)
    return bool(np.all(frac > margin))


def _off_ties(values, grid, margin=1e-3):
    """Moves values that sit within ``margin`` of a half level up by a quarter step (never past the maximum)."""
    values = np.array(values, dtype=np.float32)
    levels = values.astype(np.float64) / grid.delta - grid.offset
    near = np.abs(levels - np.floor(levels) - 0.5) <= margin
    values[near] = (levels[near] + 0.25 + grid.offset) * grid.delta
    return values


# --------------------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("bw", [8, 4])
def test_per_channel_symmetric_weights_agree(bw):
    import torch
    w = _weights(7 + bw, (16, 8, 3, 3))
    q2 = _qdq2((16, 1, 1, 1), bw, True, [w])
    grids = [tfm.compute_encoding(float(w[c].min()), float(w[c].max()), bw, symmetric=True,
                                  strict_symmetric=False, unsigned_symmetric=True) for c in range(16)]
    qmin = -(2 ** (bw - 1))
    np.testing.assert_allclose([g.min for g in grids], _arr(q2.get_min()), rtol=RTOL)
    np.testing.assert_allclose([g.max for g in grids], _arr(q2.get_max()), rtol=RTOL)
    np.testing.assert_allclose([g.delta for g in grids], _arr(q2.get_scale()), rtol=RTOL)
    assert [g.offset for g in grids] == list(_arr(q2.get_offset()) + qmin) == [float(qmin)] * 16

    # the fake-quantized weights, moved off half levels (a channel's min and max are whole levels: unchanged)
    calibrated = w
    w = torch.from_numpy(np.stack([_off_ties(w[c].numpy(), g) for c, g in enumerate(grids)]))
    for c, g in enumerate(grids):
        assert float(w[c].max()) == float(calibrated[c].max()) and float(w[c].min()) >= float(calibrated[c].min())
        assert _away_from_half(w[c].numpy().astype(np.float64) / g.delta - g.offset)
        assert np.float32(g.min) <= w[c].min().item() and w[c].max().item() <= np.float32(g.max)  # kernel's f32 clamp
    ours = np.stack([tfm.quantize_dequantize(w[c].numpy(), g.min, g.max, bw) for c, g in enumerate(grids)])
    with torch.no_grad():
        theirs = q2(w).as_subclass(torch.Tensor).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_per_tensor_asymmetric_activations_agree():
    import torch
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 8, 6, 5, generator=gen) * 1.7 + 0.4 for _ in range(3)]
    q2 = _qdq2((), 8, False, batches)
    stats = tfm.MinMaxStats()
    for batch in batches:
        stats.update(batch.numpy())
    grid = tfm.compute_encoding(stats.min, stats.max, 8, symmetric=False)
    low, high = min(0.0, stats.min), max(0.0, stats.max)
    assert high - low > 0.01                                  # far from either minimum range
    assert _away_from_half(np.array([-low / ((high - low) / 255)]))  # zero level not at a tie
    np.testing.assert_allclose(grid.min, _arr(q2.get_min()), rtol=RTOL)
    np.testing.assert_allclose(grid.max, _arr(q2.get_max()), rtol=RTOL)
    np.testing.assert_allclose(grid.delta, _arr(q2.get_scale()), rtol=RTOL)
    assert grid.offset == _f(q2.get_offset())

    data = torch.cat([b.reshape(-1) for b in batches])
    inside = torch.from_numpy(_off_ties(data[(data >= grid.min) & (data <= grid.max)].numpy(), grid))
    assert _away_from_half(inside.double().numpy() / grid.delta - grid.offset)
    ours = tfm.quantize_dequantize(inside.numpy(), grid.min, grid.max, 8)
    with torch.no_grad():
        theirs = q2(inside).as_subclass(torch.Tensor).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_non_negative_activations_agree():
    import torch
    relu_out = torch.rand(4, 16, generator=torch.Generator().manual_seed(5)) * 3.0
    q2 = _qdq2((), 8, False, [relu_out])
    grid = tfm.compute_encoding(float(relu_out.min()), float(relu_out.max()), 8, symmetric=False)
    assert grid.min == 0.0 and grid.offset == 0.0 == _f(q2.get_offset())
    np.testing.assert_allclose([grid.max, grid.delta], [_arr(q2.get_max())[0], _arr(q2.get_scale())[0]], rtol=RTOL)


# --------------------------------------------------------------------------------------------- documented differences
def test_difference_exact_tie_rounds_away_in_1_22_and_to_even_in_2x():
    """Spec 9.7: at an exact half level 1.22.2 rounds away from zero, 2.x to even (delta = 1/16, x = 2.5 delta)."""
    import torch
    q2 = _qdq2((), 8, False, [torch.tensor([0.0, 15.9375])])
    assert _f(q2.get_scale()) == 1 / 16 and _f(q2.get_offset()) == 0.0
    x = np.array([2.5 / 16, 3.5 / 16], dtype=np.float32)
    ours = tfm.quantize_dequantize(x, 0.0, 15.9375, 8)
    with torch.no_grad():
        theirs = q2(torch.from_numpy(x)).as_subclass(torch.Tensor).numpy()
    assert ours.tolist() == [3 / 16, 4 / 16]          # 2.5 -> 3, 3.5 -> 4
    assert theirs.tolist() == [2 / 16, 4 / 16]        # 2.5 -> 2, 3.5 -> 4


def test_difference_minimum_range_on_a_constant_tensor():
    """Spec 9.7: 1.22.2 widens a zero range to 0.01; 2.x only enforces a minimum scale of about 1e-7."""
    import torch
    q2 = _qdq2((), 8, False, [torch.zeros(10)])
    grid = tfm.compute_encoding(0.0, 0.0, 8, symmetric=False)
    assert (grid.min, grid.max, grid.delta) == (0.0, 0.01, 0.01 / 255)
    assert _f(q2.get_max()) < 1e-4


def test_difference_symmetric_grid_when_min_outweighs_max():
    """1.22.2: delta = max(|min|, |max|)/127; 2.x: delta = max(max/127, -min/128). Channel [-1, 0.5], bw 8."""
    import torch
    q2 = _qdq2((1,), 8, True, [torch.tensor([-1.0, 0.5])])
    grid = tfm.compute_encoding(-1.0, 0.5, 8, symmetric=True)
    assert grid.delta == 1 / 127 and grid.min == -128 / 127 and grid.max == 1.0
    assert math.isclose(_f(q2.get_scale()), 1 / 128, rel_tol=1e-7)
    assert math.isclose(_f(q2.get_min()), -1.0, rel_tol=1e-7)


def test_difference_unsigned_symmetric_all_positive_channel():
    """1.22.2 (unsigned_symmetric True) gives [0.2, 1.0] the asymmetric grid [0, 1]; 2.x stays signed symmetric."""
    import torch
    q2 = _qdq2((1,), 8, True, [torch.tensor([0.2, 1.0])])
    grid = tfm.compute_encoding(0.2, 1.0, 8, symmetric=True, unsigned_symmetric=True)
    assert (grid.min, grid.max, grid.offset) == (0.0, 1.0, 0.0) and grid.delta == 1 / 255
    assert math.isclose(_f(q2.get_min()), -128 / 127, rel_tol=1e-6)
