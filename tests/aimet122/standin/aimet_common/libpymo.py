"""Stand-in for AIMET 1.22.2's compiled ``aimet_common.libpymo`` (pybind11 module), for tests only.

AIMET 1.22.2 Python, stand-in numeric core. Our own Python; the arithmetic is in ``aimet122_tf_math``.
Provided: the parts the torch quantsim and BN-fold paths use, with the same names, fields and call shapes
as the pybind11 bindings (ModelOptimizations/PyModelOptimizations/PyModelOptimizations.cpp @ 1.22.2):

* enums ``QuantizationMode``, ``RoundingMode``, ``ComputationMode``, ``LayerInOut``, ``TensorQuantizerOpMode``;
* ``TfEncoding`` (min, max, delta, offset as doubles, bw as int; assignments type-checked like pybind11:
  a float, None or a string for ``bw`` raises TypeError, as does None or a string for the doubles);
* ``EncodingAnalyzerForPython`` and ``TensorQuantizer`` (numpy in, TF scheme only);
* ``BNParams``, ``TensorParams`` and ``fold`` (batch_norm_fold.py);
* ``TensorQuantizationSimForPython`` (numpy quantize-dequantize).

Anything else (SVD, cross-layer scaling, bias correction, TF-enhanced / percentile analysers) raises
NotImplementedError when used, naming what is missing, so a test never passes on a silently wrong path.
"""
from __future__ import annotations

import enum
from typing import List, Tuple

import aimet122_tf_math as tfm
import numpy as np

STANDIN = "AIMET 1.22.2 Python, stand-in numeric core"


class _PybindEnum(enum.Enum):
    """pybind11 enums: hashable, named, convertible to int."""

    def __int__(self):
        return self.value

    def __index__(self):
        return self.value


class ComputationMode(_PybindEnum):
    COMP_MODE_CPU = 0
    COMP_MODE_GPU = 1


class QuantizationMode(_PybindEnum):
    QUANTIZATION_TF = 0
    QUANTIZATION_TF_ENHANCED = 1
    QUANTIZATION_RANGE_LEARNING = 2
    QUANTIZATION_PERCENTILE = 3
    QUANTIZATION_MSE = 4
    QUANTIZATION_ENTROPY = 5


class LayerInOut(_PybindEnum):
    LAYER_INPUT = 0
    LAYER_OUTPUT = 1


class RoundingMode(_PybindEnum):
    ROUND_NEAREST = 0
    ROUND_STOCHASTIC = 1


class TensorQuantizerOpMode(_PybindEnum):
    updateStats = 0
    oneShotQuantizeDequantize = 1
    quantizeDequantize = 2
    passThrough = 3


def require_tf_scheme(mode) -> None:
    """The stand-in implements the TF (min/max) analyser only."""
    if mode is not QuantizationMode.QUANTIZATION_TF:
        raise NotImplementedError(
            "%s: only QuantizationMode.QUANTIZATION_TF (quant_scheme 'tf') is implemented, not %r" % (STANDIN, mode))


def _not_bindable(cls):
    """pybind11 classes without pickle support refuse pickling and deepcopy; so do these."""
    def __reduce_ex__(self, protocol):
        raise TypeError("cannot pickle '%s' object" % type(self).__qualname__)
    cls.__reduce_ex__ = __reduce_ex__
    return cls


def _as_int(name: str, value) -> int:
    # pybind11's int caster refuses floats (and None, strings); it takes ints, bools and __index__ objects
    if isinstance(value, (float, np.floating)) or value is None or isinstance(value, (str, bytes)):
        raise TypeError("(): incompatible function arguments for TfEncoding.%s: expected int, got %r"
                        % (name, value))
    return int(value.__index__()) if hasattr(value, "__index__") else int(value)


def _as_double(name: str, value) -> float:
    # pybind11's double caster (convert=True) is PyFloat_AsDouble: numbers and __float__ objects, no strings
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError("(): incompatible function arguments for TfEncoding.%s: expected float, got %r"
                        % (name, value))
    return float(value)


@_not_bindable
class TfEncoding:
    """DlQuantization::TfEncoding: min, max, delta, offset (double) and bw (int)."""

    __slots__ = ("_min", "_max", "_delta", "_offset", "_bw")

    def __init__(self):
        # the C++ struct is left uninitialised by the default constructor; zeros here
        self._min = self._max = self._delta = self._offset = 0.0
        self._bw = 0

    min = property(lambda self: self._min, lambda self, v: setattr(self, "_min", _as_double("min", v)))
    max = property(lambda self: self._max, lambda self, v: setattr(self, "_max", _as_double("max", v)))
    delta = property(lambda self: self._delta, lambda self, v: setattr(self, "_delta", _as_double("delta", v)))
    offset = property(lambda self: self._offset, lambda self, v: setattr(self, "_offset", _as_double("offset", v)))
    bw = property(lambda self: self._bw, lambda self, v: setattr(self, "_bw", _as_int("bw", v)))

    @classmethod
    def from_grid(cls, grid: tfm.Grid) -> "TfEncoding":
        enc = cls()
        enc.min, enc.max, enc.delta, enc.offset, enc.bw = grid.min, grid.max, grid.delta, grid.offset, grid.bw
        return enc

    def __repr__(self):
        return "TfEncoding(min=%r, max=%r, delta=%r, offset=%r, bw=%r)" % (
            self._min, self._max, self._delta, self._offset, self._bw)


def _float32_array(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != np.float32:
        # py::array_t<float> converts any numeric array; keep that
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


@_not_bindable
class EncodingAnalyzerForPython:
    """EncodingAnalyzerForPython(QuantizationMode): updateStats(np.ndarray, use_cuda), computeEncoding(...)."""

    def __init__(self, quantization_mode):
        require_tf_scheme(quantization_mode)
        self._stats = tfm.MinMaxStats()
        self._valid = False

    def updateStats(self, values, use_cuda: bool = False):  # noqa: N802 (AIMET's names)
        self._valid = True
        self._stats.update(_float32_array(values, "updateStats"))

    def computeEncoding(self, bitwidth: int, is_symmetric: bool, use_strict_symmetric: bool,  # noqa: N802
                        use_unsigned_symmetric: bool) -> Tuple[TfEncoding, bool]:
        if not self._valid:
            return TfEncoding(), False
        grid = tfm.compute_encoding(self._stats.min, self._stats.max, bitwidth, is_symmetric,
                                    use_strict_symmetric, use_unsigned_symmetric)
        return TfEncoding.from_grid(grid), True


@_not_bindable
class TensorQuantizer:
    """PyTensorQuantizer(QuantizationMode, RoundingMode), numpy in (the TF-framework quantizer)."""

    def __init__(self, quant_scheme, rounding_mode):
        require_tf_scheme(quant_scheme)
        self._scheme = quant_scheme
        self.roundingMode = rounding_mode  # noqa: N815
        self.isEncodingValid = False  # noqa: N815
        self._stats = tfm.MinMaxStats()
        self._strict = False
        self._unsigned = False

    def updateStats(self, values, use_cuda: bool = False):  # noqa: N802
        self._stats.update(_float32_array(values, "updateStats"))
        self.isEncodingValid = True

    def computeEncoding(self, bitwidth: int, use_symmetric: bool) -> TfEncoding:  # noqa: N802
        grid = tfm.compute_encoding(self._stats.min, self._stats.max, bitwidth, use_symmetric,
                                    self._strict, self._unsigned)
        return TfEncoding.from_grid(grid)

    def quantizeDequantize(self, values, output, enc_min: float, enc_max: float, bw: int,  # noqa: N802
                           use_cuda: bool = False) -> None:
        result = tfm.quantize_dequantize(_float32_array(values, "quantizeDequantize"), enc_min, enc_max, bw,
                                         stochastic=self.roundingMode is RoundingMode.ROUND_STOCHASTIC)
        np.copyto(output, result.reshape(np.shape(output)))

    def resetEncodingStats(self):  # noqa: N802
        self._stats = tfm.MinMaxStats()
        self.isEncodingValid = False

    def setQuantScheme(self, scheme):  # noqa: N802
        require_tf_scheme(scheme)
        self._scheme = scheme

    def getQuantScheme(self):  # noqa: N802
        return self._scheme

    def setStrictSymmetric(self, value: bool):  # noqa: N802
        self._strict = bool(value)

    def getStrictSymmetric(self) -> bool:  # noqa: N802
        return self._strict

    def setUnsignedSymmetric(self, value: bool):  # noqa: N802
        self._unsigned = bool(value)

    def getUnsignedSymmetric(self) -> bool:  # noqa: N802
        return self._unsigned

    def getStatsHistogram(self):  # noqa: N802
        raise NotImplementedError("%s: no histogram for the TF scheme" % STANDIN)


@_not_bindable
class TensorQuantizationSimForPython:
    """quantizeDequantize(np.ndarray, TfEncoding-like min/max/bw, ...) -> np.ndarray."""

    def quantizeDequantize(self, values, encoding, bw=None, use_cuda=False, *args):  # noqa: N802
        bw = encoding.bw if bw is None or isinstance(bw, bool) else bw
        return tfm.quantize_dequantize(_float32_array(values, "quantizeDequantize"), encoding.min, encoding.max, bw)


# ------------------------------------------------------------------------------------------------- BN fold
class _VectorStruct:
    """A pybind11 struct of std::vector fields: reads return a copy, writes convert."""

    _fields = {}

    def __init__(self):
        for name, kind in self._fields.items():
            object.__setattr__(self, "_" + name, np.zeros(0, dtype=kind))

    def __getattr__(self, name):
        if name in type(self)._fields:
            return object.__getattribute__(self, "_" + name).copy()
        raise AttributeError(name)

    def __setattr__(self, name, value):
        kind = type(self)._fields.get(name)
        if kind is None:
            raise AttributeError("'%s' object has no attribute '%s'" % (type(self).__name__, name))
        array = np.asarray(value)
        if array.ndim != 1:
            raise TypeError("%s.%s: expected a 1-d sequence, got shape %s" % (type(self).__name__, name, array.shape))
        if kind is np.int32 and array.dtype.kind == "f":
            raise TypeError("%s.%s: expected integers" % (type(self).__name__, name))
        object.__setattr__(self, "_" + name, array.astype(kind))


_not_bindable(_VectorStruct)


class BNParams(_VectorStruct):
    """BNParamsForPython: beta, gamma, runningMean, runningVar (AIMET passes sqrt(var + eps) as runningVar)."""
    _fields = {"beta": np.float32, "gamma": np.float32, "runningMean": np.float32, "runningVar": np.float32}


class TensorParams(_VectorStruct):
    """TensorParamsForPython: shape (ints) and data (flat floats)."""
    _fields = {"shape": np.int32, "data": np.float32}


def fold(bn_params: BNParams, weight_tensor: TensorParams, bias_tensor: TensorParams, is_bias_valid: bool,
         fold_backward: bool) -> List[float]:
    """BatchNormFoldForPython::fold: updates ``weight_tensor.data`` in place and returns the new bias."""
    shape = list(weight_tensor.shape)
    if len(shape) != 4:
        raise ValueError("%s: fold expects a 4-d weight shape, got %s" % (STANDIN, shape))
    new_weight, new_bias = tfm.fold_bn(weight_tensor.data, shape, bias_tensor.data, bool(is_bias_valid),
                                       bn_params.gamma, bn_params.beta, bn_params.runningMean, bn_params.runningVar,
                                       bool(fold_backward))
    weight_tensor.data = new_weight
    return new_bias.tolist()


# ------------------------------------------------------------------------------------------------- the rest
class _MissingMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing("%s.%s" % (cls.__name__, name))


class _Missing(metaclass=_MissingMeta):
    def __new__(cls, *_args, **_kwargs):
        raise NotImplementedError("%s: libpymo.%s is not provided" % (STANDIN, cls.__name__))


def _missing(name: str) -> type:
    return _MissingMeta(name, (_Missing,), {})


def __getattr__(name):
    """Bindings this stand-in does not provide: a type (so annotations still evaluate) that fails when used."""
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)
