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

from typing import Callable, Dict, List

import torch
from torch import nn

from ..model import split_relu_sites
from .base import AdapterBase


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
        for name, module in sim.model.named_modules():
            quantizers = getattr(module, "param_quantizers", None)
            if quantizers is None:
                continue
            for param, quantizer in quantizers.items():
                if quantizer is not None:
                    yield f"{name}.{param}", module, param, quantizer

    def param_channels(self, sim) -> Dict[str, int]:
        return {key: int(getattr(module, param).shape[0]) for key, module, param, _ in self._param_quantizers(sim)}

    def load_param_encodings(self, sim, encodings: Dict[str, List[dict]], path: str) -> None:
        by_key = {key: quantizer for key, _, _, quantizer in self._param_quantizers(sim)}
        for key, entries in encodings.items():
            set_legacy_grid(by_key[key], entries)

    def fold_param_quantizers(self, sim) -> bool:
        """Quantize every weight once (frozen encodings kept, others from the weights), as the sim would per forward."""
        sim.fold_param_quantizers()
        return True

    def compute_encodings(self, sim, callback: Callable[[nn.Module], None]) -> None:
        sim.compute_encodings(callback)

    def summary(self, sim) -> Dict[str, int]:
        activation, params = set(), set()
        for module in sim.model.modules():
            if hasattr(module, "param_quantizers"):
                params |= {id(q) for q in module.param_quantizers.values() if q is not None}
                activation |= {id(q) for q in list(module.input_quantizers) + list(module.output_quantizers) if q is not None}
        groups = self._groups.get(id(sim), {})
        return {
            "activation": len(activation), "param": len(params), "enabled": len(activation) + len(params),
            "shared_relu_groups": len(groups), "relu_call_sites": sum(len(g) for g in groups.values()),
        }

    def export_param_encodings(self, sim) -> Dict[str, List[dict]]:
        out = {}
        for key, _, _, quantizer in self._param_quantizers(sim):
            if quantizer.is_initialized():
                out[key] = legacy_entries(quantizer)
        return out


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
