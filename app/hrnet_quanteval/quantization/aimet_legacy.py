"""AIMET 1.22 adapter (the ``legacy`` image: the zoo's published setup).

Written against AIMET 1.22.2 (quic/aimet, tag 1.22.2): ``QuantizationSimModel(model, dummy_input,
quant_scheme, rounding_mode, default_output_bw, default_param_bw, in_place, config_file, default_data_type)``,
``compute_encodings(callback, args)`` calling ``callback(sim.model, args)``,
``set_and_freeze_param_encodings(path)``, ``fold_all_batch_norms(model, input_shapes)``, and wrappers
``QcQuantizeWrapper`` with ``param_quantizers`` (dict), ``input_quantizers``/``output_quantizers`` (lists)
of tensor quantizers with ``enabled``, ``bitwidth``, ``use_symmetric_encodings``, ``encoding`` (libpymo
``TfEncoding``: ``min``, ``max``, ``delta``, ``offset``, ``bw``) and ``is_encoding_frozen`` (a property).

Reused modules need no work in this generation: 1.22 wraps HRNet's shared ReLUs once, which is the behaviour
being reproduced. The tests run this adapter against AIMET 1.22.2's own Python sources with a stand-in for
its compiled numeric core (``make test-legacy``).
"""
from __future__ import annotations

import tempfile
from typing import Callable, Dict, List, Set, Tuple

import torch
from torch import nn

from .base import AdapterBase
from .encodings import EncodingsFile


class Adapter(AdapterBase):
    generation = 1
    package = "AimetTorch"
    config_name = "per_channel_aimet1.json"

    def __init__(self) -> None:
        from aimet_common.utils import AimetLogger
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.qc_quantize_op import QcQuantizeWrapper
        from aimet_torch.quantsim import QuantizationSimModel

        super().__init__(AimetLogger)
        self._fold = fold_all_batch_norms
        self._sim_class = QuantizationSimModel
        self._wrapper = QcQuantizeWrapper

    def create_sim(self, model: nn.Module, dummy: torch.Tensor, param_bw: int, output_bw: int):
        # the zoo's call: quant_scheme "tf", rounding_mode left at its default "nearest"
        return self._sim_class(
            model, dummy_input=dummy, quant_scheme="tf", rounding_mode="nearest",
            default_output_bw=output_bw, default_param_bw=param_bw, config_file=self.config_file,
        )

    def _wrappers(self, sim):
        return [(name, m) for name, m in sim.model.named_modules() if isinstance(m, self._wrapper)]

    def _param_quantizers(self, sim):
        for name, wrapper in self._wrappers(sim):
            for param, quantizer in wrapper.param_quantizers.items():
                yield f"{name}.{param}", wrapper, param, quantizer

    def param_channels(self, sim) -> Dict[str, int]:
        return {
            key: int(getattr(wrapper._module_to_wrap, param).shape[0])  # noqa: SLF001
            for key, wrapper, param, _ in self._param_quantizers(sim)
            if getattr(wrapper._module_to_wrap, param, None) is not None  # noqa: SLF001
        }

    def enabled_param_keys(self, sim) -> Set[str]:
        return {key for key, _, _, quantizer in self._param_quantizers(sim) if quantizer.enabled}

    def load_param_encodings(self, sim, encodings: EncodingsFile) -> None:
        """AIMET 1.22's own ``set_and_freeze_param_encodings``, given the entries as the flat file it reads.

        Every key was matched to a parameter first, so 1.22's silent no-match cannot happen; keys of disabled
        quantizers (``*.bias``) are set and frozen by 1.22 itself and quantize nothing.
        """
        with tempfile.TemporaryDirectory(prefix="hrnet-quanteval-encodings-") as folder:
            sim.set_and_freeze_param_encodings(encoding_path=encodings.write_flat(folder))

    def frozen_param_count(self, sim) -> int:
        """Enabled weight quantizers whose encoding is frozen, read from the sim."""
        return sum(1 for _, _, _, q in self._param_quantizers(sim) if q.enabled and q.is_encoding_frozen)

    def fold_param_quantizers(self, sim) -> bool:
        """AIMET 1.22 has no way to quantize weights once; the sim keeps doing it per forward pass."""
        return False

    def compute_encodings(self, sim, callback: Callable[[nn.Module], None]) -> None:
        sim.compute_encodings(lambda model, _: callback(model), None)

    def summary(self, sim) -> Dict[str, int]:
        """Enabled quantizers (1.22 disables any that got no valid encoding during ``compute_encodings``)."""
        activation = params = 0
        for _, wrapper in self._wrappers(sim):
            activation += sum(q.enabled for q in list(wrapper.input_quantizers) + list(wrapper.output_quantizers))
            params += sum(q.enabled for q in wrapper.param_quantizers.values())
        return {"activation": activation, "param": params, "enabled": activation + params}

    def activation_ranges(self, sim) -> Dict[str, Dict[str, Tuple[float, float]]]:
        """Per wrapped module: ``{"input"|"output": (min, max)}`` of its enabled, calibrated activation quantizers."""
        out: Dict[str, Dict[str, Tuple[float, float]]] = {}
        for name, wrapper in self._wrappers(sim):
            for kind, quantizers in (("input", wrapper.input_quantizers), ("output", wrapper.output_quantizers)):
                for q in quantizers:
                    if q.enabled and q.encoding is not None:
                        out.setdefault(name, {})[kind] = (float(q.encoding.min), float(q.encoding.max))
        return out

    def param_settings(self, sim) -> Dict[str, Dict[str, object]]:
        """Per parameter quantizer: enabled, bitwidth, symmetric and its channel count (0: per tensor)."""
        out: Dict[str, Dict[str, object]] = {}
        for key, _, _, q in self._param_quantizers(sim):
            per_channel = type(q).__name__ == "StaticGridPerChannelQuantizer"
            channels = len(q._cppOp) if per_channel else 0  # noqa: SLF001 - 1.22 keeps one op per channel
            out[key] = {"enabled": bool(q.enabled), "bitwidth": int(q.bitwidth),
                        "symmetric": bool(q.use_symmetric_encodings), "channels": channels}
        return out

    def export_param_encodings(self, sim) -> Dict[str, List[dict]]:
        out = {}
        for key, _, _, quantizer in self._param_quantizers(sim):
            if not quantizer.enabled or quantizer.encoding is None:
                continue
            encodings = quantizer.encoding if isinstance(quantizer.encoding, list) else [quantizer.encoding]
            out[key] = [
                {"bitwidth": int(e.bw), "dtype": "int", "is_symmetric": str(bool(quantizer.use_symmetric_encodings)),
                 "max": float(e.max), "min": float(e.min), "offset": int(round(e.offset)), "scale": float(e.delta)}
                for e in encodings
            ]
        return out

    # -- diagnose (see AdapterBase): 1.22's quantizers carry an ``enabled`` flag; the slot state is that flag ---

    def _quantizer_slots(self, sim) -> Dict[str, Dict[Tuple[str, object], object]]:
        out: Dict[str, Dict[Tuple[str, object], object]] = {}
        for name, wrapper in self._wrappers(sim):
            slots: Dict[Tuple[str, object], object] = {}
            slots.update({("input", i): bool(q.enabled) for i, q in enumerate(wrapper.input_quantizers)})
            slots.update({(param, param): bool(q.enabled) for param, q in wrapper.param_quantizers.items()})
            slots.update({("output", i): bool(q.enabled) for i, q in enumerate(wrapper.output_quantizers)})
            out[name] = slots
        return out

    def _set_slot(self, sim, module: str, role: str, slot, state, on: bool) -> None:
        wrapper = sim.model.get_submodule(module)
        if role == "input":
            quantizer = wrapper.input_quantizers[slot]
        elif role == "output":
            quantizer = wrapper.output_quantizers[slot]
        else:
            quantizer = wrapper.param_quantizers[slot]
        quantizer.enabled = bool(state) and on  # the encoding (frozen or calibrated) stays where it is

    def _slot_enabled(self, state) -> bool:
        return bool(state)
