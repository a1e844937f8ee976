"""aimet-torch 2.x adapter (the ``current`` image and CI).

Differences from AIMET 1.22 that this adapter absorbs (spec 9.7):

- no ``rounding_mode`` argument; ``QuantScheme`` lives in ``aimet_torch.common.defs``;
- ``unsigned_symmetric`` must be "False" (``per_channel_aimet2.json``);
- a module called at several places gets its quantizers *disabled*. HRNet calls 116 of its ReLU modules
  more than once. AIMET 1.22 instead wrapped each such module once, so all its call sites shared one output
  quantizer whose min/max pooled every site. This adapter gives each call site its own ReLU before building
  the sim (``split_relu_sites``) and then puts one quantizer object back into every site of a group: the
  same tensors are quantized, with one shared encoding calibrated over all sites, as in 1.22.
- a 1.22-style encodings file is applied quantizer by quantizer with the scale and offset it names
  (``set_and_freeze_param_encodings`` of 2.x would rebuild the grid from min/max only).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Set, Tuple

import torch
from torch import nn

from ..model import split_relu_sites
from .base import AdapterBase
from .encodings import EncodingsFile


def _is_true(value) -> bool:
    return str(value).strip().lower() == "true"


class Adapter(AdapterBase):
    generation = 2
    package = "aimet-torch"
    config_name = "per_channel_aimet2.json"

    def __init__(self) -> None:
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.common.utils import AimetLogger
        from aimet_torch.quantsim import QuantizationSimModel

        super().__init__(AimetLogger)
        self._fold = fold_all_batch_norms
        self._sim_class = QuantizationSimModel
        self._groups: Dict[int, Dict[str, List[str]]] = {}

    def create_sim(self, model: nn.Module, dummy: torch.Tensor, param_bw: int, output_bw: int):
        groups = split_relu_sites(model)
        sim = self._sim_class(
            model, dummy_input=dummy, quant_scheme="tf", default_output_bw=output_bw,
            default_param_bw=param_bw, config_file=self.config_file,
        )
        tie_output_quantizers(sim.model, groups)
        self._groups[id(sim)] = groups
        return sim

    def _param_quantizers(self, sim):
        """(key, module, param, quantizer or None) for every parameter of every quantized module."""
        for name, module in sim.model.named_modules():
            quantizers = getattr(module, "param_quantizers", None)
            if quantizers is None:
                continue
            for param, quantizer in quantizers.items():
                yield f"{name}.{param}", module, param, quantizer

    def param_channels(self, sim) -> Dict[str, int]:
        return {key: int(getattr(module, param).shape[0]) for key, module, param, _ in self._param_quantizers(sim)
                if getattr(module, param, None) is not None}

    def enabled_param_keys(self, sim) -> Set[str]:
        return {key for key, _, _, quantizer in self._param_quantizers(sim) if quantizer is not None}

    def load_param_encodings(self, sim, encodings: EncodingsFile) -> None:
        """Each enabled quantizer gets the file's exact grid, frozen; keys of disabled quantizers (``*.bias``)
        have nothing to set here, which is what they do in AIMET 1.22 too: they quantize nothing."""
        by_key = {key: quantizer for key, _, _, quantizer in self._param_quantizers(sim) if quantizer is not None}
        for key, entries in encodings.entries.items():
            if key in by_key:
                set_legacy_grid(by_key[key], entries)

    def frozen_param_count(self, sim) -> int:
        """Weight quantizers whose encoding can no longer be overwritten, read from the sim."""
        return sum(1 for _, _, _, q in self._param_quantizers(sim)
                   if q is not None and q.is_initialized() and not q.is_overwrite_allowed())

    def fold_param_quantizers(self, sim) -> bool:
        """Quantize every weight once (frozen encodings kept, others from the weights), as the sim would per forward."""
        sim.fold_param_quantizers()
        return True

    def compute_encodings(self, sim, callback: Callable[[nn.Module], None]) -> None:
        sim.compute_encodings(callback)

    def summary(self, sim) -> Dict[str, int]:
        """Quantizers in the sim; a weight quantized once (``fold_param_quantizers``) still counts as one."""
        from aimet_torch.quantization.tensor import DequantizedTensor

        activation, params = set(), set()
        folded = 0
        for module in sim.model.modules():
            if hasattr(module, "param_quantizers"):
                params |= {id(q) for q in module.param_quantizers.values() if q is not None}
                folded += sum(isinstance(getattr(module, p, None), DequantizedTensor) and q is None
                              for p, q in module.param_quantizers.items())
                activation |= {id(q) for q in list(module.input_quantizers) + list(module.output_quantizers) if q is not None}
        groups = self._groups.get(id(sim), {})
        return {
            "activation": len(activation), "param": len(params) + folded, "enabled": len(activation) + len(params) + folded,
            "shared_relu_groups": len(groups), "relu_call_sites": sum(len(g) for g in groups.values()),
        }

    def activation_ranges(self, sim) -> Dict[str, Dict[str, Tuple[float, float]]]:
        """Per quantized module: ``{"input"|"output": (min, max)}`` of its calibrated activation quantizers."""
        out: Dict[str, Dict[str, Tuple[float, float]]] = {}
        for name, module in sim.model.named_modules():
            if not hasattr(module, "output_quantizers"):
                continue
            for kind, quantizers in (("input", module.input_quantizers), ("output", module.output_quantizers)):
                for q in quantizers:
                    if q is not None and q.is_initialized():
                        out.setdefault(name, {})[kind] = (float(q.get_min().detach()), float(q.get_max().detach()))
        return out

    def param_settings(self, sim) -> Dict[str, Dict[str, object]]:
        """Per parameter quantizer: enabled, bitwidth, symmetric and its channel count (0: per tensor)."""
        out: Dict[str, Dict[str, object]] = {}
        for key, _, _, q in self._param_quantizers(sim):
            if q is None:
                out[key] = {"enabled": False, "bitwidth": None, "symmetric": None, "channels": 0}
                continue
            shape = tuple(q.shape)
            channels = shape[0] if shape and all(d == 1 for d in shape[1:]) and shape[0] > 1 else 0
            out[key] = {"enabled": True, "bitwidth": int(q.bitwidth), "symmetric": bool(q.symmetric), "channels": channels}
        return out

    def export(self, sim, directory: str, prefix: str, dummy: torch.Tensor) -> List[str]:
        """aimet-torch's export, with its encodings in the 0.6.1 dict layout (1.22's, nested under
        ``param_encodings``), so that ``--encodings`` reads an export back on either generation."""
        import warnings

        from aimet_torch.common import quantsim as settings

        saved = settings.encoding_version
        settings.encoding_version = "0.6.1"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return super().export(sim, directory, prefix, dummy)
        finally:
            settings.encoding_version = saved

    def export_param_encodings(self, sim) -> Dict[str, List[dict]]:
        out = {}
        for key, _, _, quantizer in self._param_quantizers(sim):
            if quantizer is not None and quantizer.is_initialized():
                out[key] = legacy_entries(quantizer)
        return out

    # -- diagnose (see AdapterBase): quantizer slots hold a quantizer or None; None turns a slot off ---------

    def match_sim_layout(self, model: nn.Module) -> None:
        """Every call site of a shared ReLU gets its own module, as ``create_sim`` does before building the sim."""
        split_relu_sites(model)

    def _quantizer_slots(self, sim) -> Dict[str, Dict[Tuple[str, object], object]]:
        out: Dict[str, Dict[Tuple[str, object], object]] = {}
        for name, module in sim.model.named_modules():
            if not (hasattr(module, "param_quantizers") and hasattr(module, "output_quantizers")):
                continue
            slots: Dict[Tuple[str, object], object] = {}
            slots.update({("input", i): q for i, q in enumerate(module.input_quantizers)})
            slots.update({(param, param): q for param, q in module.param_quantizers.items()})
            slots.update({("output", i): q for i, q in enumerate(module.output_quantizers)})
            out[name] = slots
        return out

    def _set_slot(self, sim, module: str, role: str, slot, state, on: bool) -> None:
        target = sim.model.get_submodule(module)
        value = state if on else None
        if role == "input":
            target.input_quantizers[slot] = value
        elif role == "output":
            target.output_quantizers[slot] = value  # a shared ReLU's sites get the same object back: still tied
        else:
            target.param_quantizers[slot] = value

    def _slot_enabled(self, state) -> bool:
        return state is not None

    def _layer_of(self, sim) -> Dict[str, str]:
        """Each call site of a shared ReLU belongs to the layer named after the original module."""
        return {site: sites[0] for sites in self._groups.get(id(sim), {}).values() for site in sites}


def tie_output_quantizers(model: nn.Module, groups: Dict[str, List[str]]) -> None:
    """Make every call site of a group use the first site's output quantizer (or none, if it has none)."""
    for names in groups.values():
        shared = model.get_submodule(names[0]).output_quantizers[0]
        for name in names[1:]:
            model.get_submodule(name).output_quantizers[0] = shared


def set_legacy_grid(quantizer, entries: List[dict]) -> None:
    """Give a per-channel quantizer the exact 1.22 grid of ``entries`` (scale, offset, bitwidth) and freeze it.

    1.22 quantizes x to round(x / scale - offset) in [0, 2^bw - 1] and back to scale * (q + offset). When every
    channel is signed-symmetric (offset -2^(bw-1)) this is 2.x's signed symmetric grid; otherwise (an
    unsigned-symmetric channel) the quantizer becomes asymmetric with per-channel offsets, which is the
    same grid written differently.
    """
    bitwidth = int(entries[0]["bitwidth"])
    scale = torch.tensor([float(e["scale"]) for e in entries], dtype=torch.float32)
    offset = torch.tensor([round(float(e["offset"])) for e in entries], dtype=torch.float32)
    half = 2 ** (bitwidth - 1)
    signed = _is_true(entries[0]["is_symmetric"]) and bool(torch.all(offset == -half))
    shape = quantizer.shape
    device = next(quantizer.parameters()).device
    quantizer._reparametrize_to_scale_offset()  # noqa: SLF001 - 2.x has no public way to set scale and offset
    quantizer.qmin, quantizer.qmax = (-half, half - 1) if signed else (0, 2 * half - 1)
    quantizer.symmetric = signed  # a signed grid has no offset parameter, an unsigned one gets one
    with torch.no_grad():
        quantizer.scale.copy_(scale.view(shape).to(device))
        if not signed:
            quantizer.offset.copy_(offset.view(shape).to(device))
    quantizer.requires_grad_(False)
    quantizer.allow_overwrite(False)


def legacy_entries(quantizer) -> List[dict]:
    """A quantizer's per-channel grid in the 1.22 encodings-file format."""
    scale = quantizer.get_scale().detach().flatten().cpu().tolist()
    offset = quantizer.get_offset().detach().flatten().cpu().tolist()
    bitwidth = int(round(torch.log2(torch.tensor(float(quantizer.qmax - quantizer.qmin + 1))).item()))
    levels = 2**bitwidth - 1
    # 1.22 counts levels from 0: a signed grid's qmin moves into the offset
    shift = quantizer.qmin
    entries = []
    for s, o in zip(scale, offset):
        o1 = o + shift
        entries.append({
            "bitwidth": bitwidth, "dtype": "int", "is_symmetric": str(bool(quantizer.symmetric)),
            "max": s * (o1 + levels), "min": s * o1, "offset": int(o1), "scale": s,
        })
    return entries
