"""The numeric core of AIMET 1.22.2's TF ("min/max") scheme, rewritten in numpy for tests.

Our own code, written from the description in ``shared/spec/reference-behaviour.md`` section 9.3 and from
reading AIMET 1.22.2's C++ (DlQuantization: TfEncodingAnalyzer, getComputedEncodings, gateMinMax,
TensorQuantizationSim, quantizeDequantizeCpu; DlEqualization: BatchNormFold). Nothing here imports AIMET,
so it loads on every interpreter the project supports (3.8 with numpy 1.23, 3.11). The ``libpymo`` and
``AimetTensorQuantizer`` stand-ins call into this module; the main suite compares it with aimet-torch 2.x.

What AIMET 1.22.2 does, in the order it does it:

* statistics: one running minimum and maximum over every element seen, kept as C doubles
  (initially +DBL_MAX / -DBL_MAX);
* encoding (``computeEncoding``), all in double, N = 2**bw - 1 (one less for strict symmetric):
  m = min(0, min), M = max(0, max), M = max(M, m + 0.01); then
  - symmetric, unless (unsigned_symmetric and m >= 0): M' = max(|m|, |M|), delta = M' / floor(N/2),
    offset = -ceil(N/2), min = offset * delta, max = delta * floor(N/2);
  - otherwise (asymmetric, or unsigned symmetric on non-negative data): delta = (M - m) / N;
    offset = -clamp(round(-m/delta), 0, N) when m < 0 < M, else round(m/delta);
    min = delta * offset, max = M - m + min;
* quantize-dequantize (``quantizeDequantize``): the kernel is given only min, max and bw of the encoding.
  It re-derives the grid in double: min = min(min, 0), max = max(max, 0), max = max(max, min + 1e-5);
  N = 2**bw - 1, minus one when min == -max exactly; delta = (max - min) / N; offset = round(min / delta).
  Then, per element in float32 (the four grid values are cast to float):
  x = fmax(fmin(x, max), min); q = roundf(x / delta - offset); out = delta * (q + offset).
  ``round``/``roundf`` round halves away from zero.
* per-channel quantizers keep one such analyser/kernel per slice along the channel axis.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

MIN_RANGE = 0.01        # TfEncodingAnalyzer::MIN_RANGE: smallest max - min of a computed encoding
KERNEL_EPSILON = 1e-5   # quantization_utils.hpp EPSILON: gateMinMax's smallest max - min in the kernel
DBL_MAX = float(np.finfo(np.float64).max)


class Grid(NamedTuple):
    """One encoding: what libpymo.TfEncoding holds."""
    min: float
    max: float
    delta: float
    offset: float
    bw: int


# ---------------------------------------------------------------------------------------------- rounding
def round_half_away(value):
    """C's ``round``/``roundf``: to the nearest integer, halves away from zero.

    Works on Python floats (as C ``round`` on a double) and on numpy arrays (keeping their dtype, as
    ``roundf`` on floats). Exact: ``a - floor(a)`` is representable for every finite float.
    """
    if isinstance(value, np.ndarray):
        magnitude = np.abs(value)
        whole = np.floor(magnitude)
        rounded = whole + (magnitude - whole >= 0.5).astype(value.dtype)
        return np.copysign(rounded, value)
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return value
    magnitude = abs(value)
    whole = math.floor(magnitude)
    rounded = float(whole + (1 if magnitude - whole >= 0.5 else 0))
    return math.copysign(rounded, value)


def round_half_even(value):
    """torch.round / numpy.round: halves to the even neighbour (aimet-torch 2.x). For comparisons only."""
    return np.round(value) if isinstance(value, np.ndarray) else float(np.round(float(value)))


# ---------------------------------------------------------------------------------------------- statistics
class MinMaxStats:
    """TfEncodingAnalyzer's accumulated statistics: running min and max in double."""

    def __init__(self):
        self.min = DBL_MAX
        self.max = -DBL_MAX
        self.updated = False

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        self.updated = True
        if values.size == 0:          # the C++ reads nothing: its min/max of zero elements is not defined
            return
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))


# ---------------------------------------------------------------------------------------------- encodings
def compute_encoding(stats_min: float, stats_max: float, bw: int, symmetric: bool,
                     strict_symmetric: bool = False, unsigned_symmetric: bool = True) -> Grid:
    """TfEncodingAnalyzer::computeEncoding + getComputedEncodings (TF scheme), in double."""
    bw = int(bw)
    new_min = min(0.0, float(stats_min))
    new_max = max(0.0, float(stats_max))
    new_max = max(new_max, new_min + MIN_RANGE)
    return grid_from_range(new_min, new_max, bw, symmetric, strict_symmetric, unsigned_symmetric)


def grid_from_range(low: float, high: float, bw: int, symmetric: bool, strict_symmetric: bool = False,
                    unsigned_symmetric: bool = True) -> Grid:
    """getComputedEncodings: the grid for a range that already contains zero."""
    num_steps = float(2 ** bw - 1)
    if symmetric and strict_symmetric:
        num_steps -= 1
    if symmetric and (low < 0.0 or not unsigned_symmetric):
        absmax = max(abs(high), abs(low))
        positive_steps = math.floor(num_steps / 2)
        delta = absmax / positive_steps
        offset = -float(math.ceil(num_steps / 2))
        return Grid(offset * delta, delta * positive_steps, delta, offset, bw)
    delta = (high - low) / num_steps
    if low < 0 < high:
        zero_level = round_half_away(-low / delta)
        zero_level = min(num_steps, max(0.0, zero_level))
        offset = -zero_level
    else:
        offset = round_half_away(low / delta)
    grid_min = delta * offset
    return Grid(grid_min, high - low + grid_min, delta, offset, bw)


def kernel_grid(enc_min: float, enc_max: float, bw: int) -> Grid:
    """The grid the quantize-dequantize kernel rebuilds from (min, max, bw) alone (fillQuantizeInfo).

    The encoding's own delta and offset are not read by the kernel.
    """
    low = min(float(enc_min), 0.0)
    high = max(float(enc_max), 0.0)
    high = max(high, low + KERNEL_EPSILON)
    num_steps = float(2 ** int(bw) - 1)
    if low == -high:
        num_steps -= 1
    delta = (high - low) / num_steps
    offset = round_half_away(low / delta)
    return Grid(low, high, delta, offset, int(bw))


# ---------------------------------------------------------------------------------------------- kernels
def quantize_dequantize(values: np.ndarray, enc_min: float, enc_max: float, bw: int,
                        stochastic: bool = False, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """quantizeDequantizeCpu<float>: a new float32 array, the values fake-quantized on the kernel's grid."""
    grid = kernel_grid(enc_min, enc_max, bw)
    q = _to_levels(values, grid, stochastic, rng)
    delta, offset = np.float32(grid.delta), np.float32(grid.offset)
    return (delta * (q + offset)).astype(np.float32)


def quantize(values: np.ndarray, enc_min: float, enc_max: float, bw: int, shift_to_signed: bool = False,
             stochastic: bool = False, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """quantizeToFxpCpu<float>: integer levels as float32, shifted by 2**(bw-1) when asked for signed."""
    q = _to_levels(values, kernel_grid(enc_min, enc_max, bw), stochastic, rng)
    if shift_to_signed:
        q = q - np.float32(2 ** (int(bw) - 1))
    return q.astype(np.float32)


def _to_levels(values: np.ndarray, grid: Grid, stochastic: bool, rng) -> np.ndarray:
    x = np.asarray(values, dtype=np.float32)
    lo, hi = np.float32(grid.min), np.float32(grid.max)
    delta, offset = np.float32(grid.delta), np.float32(grid.offset)
    x = np.fmax(np.fmin(x, hi), lo)
    x = x / delta - offset
    if stochastic:
        rng = rng or np.random.default_rng()
        return np.floor(x + rng.random(x.shape).astype(np.float32))
    return round_half_away(x)


def quantize_dequantize_reference(values: Sequence[float], grid: Grid) -> np.ndarray:
    """The spec's three-line formula (section 9.3) on a given grid, for hand checks in tests."""
    x = np.asarray(values, dtype=np.float32)
    x = np.clip(x, np.float32(grid.min), np.float32(grid.max))
    q = round_half_away(x / np.float32(grid.delta) - np.float32(grid.offset))
    return np.float32(grid.delta) * (q + np.float32(grid.offset))


# ---------------------------------------------------------------------------------------------- BN fold
def fold_bn(weight: np.ndarray, shape4d: Sequence[int], bias: np.ndarray, bias_valid: bool,
            gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, sigma: np.ndarray,
            fold_backward: bool) -> Tuple[np.ndarray, np.ndarray]:
    """BatchNormFold::fold (DlEqualization) in float32: returns (new flat weight, new bias).

    ``sigma`` is sqrt(running_var + eps) as AIMET's Python computes it (it passes it as "runningVar").
    Backward fold (BN after the conv/linear, channels on axis 0):
      W'[c] = W[c] * gamma[c] * (1/sigma[c]);  b'[c] = beta[c] - (mean[c] - b[c]) * gamma[c] * (1/sigma[c]).
    Forward fold (BN before the layer, channels on axis 1):
      W'[:, c] = W[:, c] * gamma[c] / sigma[c];
      b'[o] = sum_c S[o, c] * beta[c] - sum_c S[o, c] * mean[c] * gamma[c] / sigma[c] (+ b[o]),
      with S the weight summed over its two spatial axes (the original weight).
    """
    f32 = np.float32
    shape4d = [int(s) for s in shape4d]
    w = np.asarray(weight, dtype=f32).reshape(shape4d).copy()
    gamma, beta = np.asarray(gamma, f32), np.asarray(beta, f32)
    mean, sigma = np.asarray(mean, f32), np.asarray(sigma, f32)
    bias = np.asarray(bias, f32)
    inv_sigma = (f32(1.0) / sigma).astype(f32)
    # OpenCV scales the slice by one double factor gamma * (1/sigma), rounded to float once
    factor = (gamma.astype(np.float64) * inv_sigma.astype(np.float64)).astype(f32)
    centred = (mean - bias) if (fold_backward and bias_valid) else mean
    mu_gamma_over_sigma = ((centred * gamma).astype(f32) * inv_sigma).astype(f32)
    if fold_backward:
        new_bias = (beta - mu_gamma_over_sigma).astype(f32)
        w = (w * factor.reshape(-1, 1, 1, 1)).astype(f32)
    else:
        summed = w.sum(axis=(2, 3), dtype=f32)
        new_bias = ((summed @ beta).astype(f32) - (summed @ mu_gamma_over_sigma).astype(f32)).astype(f32)
        w = (w * factor.reshape(1, -1, 1, 1)).astype(f32)
        if bias_valid:
            new_bias = (new_bias + bias).astype(f32)
    return w.reshape(-1), new_bias
