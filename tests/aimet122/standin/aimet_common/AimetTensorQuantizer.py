"""Stand-in for AIMET 1.22.2's compiled torch extension ``aimet_common.AimetTensorQuantizer``, for tests only.

AIMET 1.22.2 Python, stand-in numeric core. Our own Python, same class and method names as the pybind11
module built from TrainingExtensions/torch/src/AimetTensorQuantizer.cpp @ 1.22.2:

    AimetTensorQuantizer(QuantizationMode)
      .updateStats(tensor, use_cuda)            running min/max (double) over every element
      .getEncoding(bw, symmetric, strict, unsigned) -> (TfEncoding, is_valid)
      .quantizeDequantize(tensor, encoding, rounding_mode, use_cuda) -> tensor
      .quantize(tensor, encoding, rounding_mode, use_cuda, shift_to_signed) -> tensor
      .resetEncodingStats(), .getStatsHistogram(), .setPercentileValue(p)

Behaviour kept from the C++:

* tensors must be float32 (``data<float>()``), anything else raises RuntimeError;
* ``getEncoding`` reports invalid (and a zero encoding) until ``updateStats`` has run since the last reset;
* ``quantizeDequantize`` and ``quantize`` read only ``encoding.min``, ``.max`` and ``.bw`` (the kernel
  rebuilds delta and offset itself) and write the result **into the input tensor's memory**, returning that
  same tensor (``at::Tensor output = input``). AIMET's Python clones the result afterwards, but the input is
  changed: a quantized model input is overwritten by its quantized values. The write bypasses autograd's
  version counter, as a raw pointer write does.

Not kept: CUDA (tensors on a GPU are computed on the CPU and written back), and the C++ reading a
non-contiguous tensor's storage as if it were contiguous (here the values are read by their strides).
"""
from __future__ import annotations

import aimet122_tf_math as tfm
import numpy as np
import torch

from aimet_common import libpymo


def _float32(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("%s(): expected a torch.Tensor, got %s" % (what, type(tensor).__name__))
    if tensor.dtype != torch.float32:
        raise RuntimeError("expected scalar type Float but found %s" % str(tensor.dtype).replace("torch.", "").title())
    return tensor


def _values(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


class AimetTensorQuantizer:
    def __init__(self, quantization_mode):
        libpymo.require_tf_scheme(quantization_mode)
        self._mode = quantization_mode
        self._stats = tfm.MinMaxStats()
        self._valid = False

    def __reduce_ex__(self, protocol):
        raise TypeError("cannot pickle 'AimetTensorQuantizer' object")

    def resetEncodingStats(self):  # noqa: N802 (AIMET's names)
        self._valid = False
        self._stats = tfm.MinMaxStats()

    def updateStats(self, tensor: torch.Tensor, use_cuda: bool):  # noqa: N802
        self._valid = True
        self._stats.update(_values(_float32(tensor, "updateStats")))

    def getEncoding(self, bitwidth: int, use_symmetric: bool, use_strict_symmetric: bool,  # noqa: N802
                    use_unsigned_symmetric: bool):
        if not self._valid:
            return libpymo.TfEncoding(), False
        grid = tfm.compute_encoding(self._stats.min, self._stats.max, bitwidth, bool(use_symmetric),
                                    bool(use_strict_symmetric), bool(use_unsigned_symmetric))
        return libpymo.TfEncoding.from_grid(grid), True

    def quantizeDequantize(self, tensor: torch.Tensor, encoding, rounding_mode, use_cuda: bool):  # noqa: N802
        _float32(tensor, "quantizeDequantize")
        result = tfm.quantize_dequantize(_values(tensor), encoding.min, encoding.max, encoding.bw,
                                         stochastic=rounding_mode is libpymo.RoundingMode.ROUND_STOCHASTIC)
        return self._write_back(tensor, result)

    def quantize(self, tensor: torch.Tensor, encoding, rounding_mode, use_cuda: bool,  # noqa: N802
                 shift_to_signed: bool):
        _float32(tensor, "quantize")
        result = tfm.quantize(_values(tensor), encoding.min, encoding.max, encoding.bw,
                              shift_to_signed=bool(shift_to_signed),
                              stochastic=rounding_mode is libpymo.RoundingMode.ROUND_STOCHASTIC)
        return self._write_back(tensor, result)

    @staticmethod
    def _write_back(tensor: torch.Tensor, result: np.ndarray) -> torch.Tensor:
        # like the C++ (output = input; kernel writes through the data pointer): same tensor, new values
        tensor.data.copy_(torch.from_numpy(result.reshape(tuple(tensor.shape))))
        return tensor

    def getStatsHistogram(self):  # noqa: N802
        raise NotImplementedError("%s: the TF scheme keeps no histogram" % libpymo.STANDIN)

    def setPercentileValue(self, percentile: float):  # noqa: N802
        # the C++ ignores it unless the scheme is percentile, which the stand-in refuses at construction
        return None
