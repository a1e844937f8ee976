"""What the adapters of both AIMET generations share, and the settings both use."""
from __future__ import annotations

import logging
import os
import warnings
import weakref
from typing import Callable, Collection, Dict, List, Tuple

import torch
from torch import nn

from ..errors import InputError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "quantsim_config")
INPUT_SHAPE = (1, 3, 256, 192)
MIN_BITWIDTH, MAX_BITWIDTH = 4, 32  # what AIMET accepts for default_param_bw / default_output_bw
ROLE_ORDER = ("input", "weight", "bias", "output")  # how a layer's quantizers are listed

# The configured quantizer state of each sim, taken the first time ``diagnose``'s adapter methods see it
# (after calibration), so that one layer at a time can be turned on and everything put back. Keyed by the
# sim object itself: an id() could be reused by a later sim.
_CONFIGURED: "weakref.WeakKeyDictionary[object, Dict[str, Dict[Tuple[str, object], object]]]" = weakref.WeakKeyDictionary()


def check_bitwidths(param_bw: int, output_bw: int) -> None:
    for flag, value in (("--default-param-bw", param_bw), ("--default-output-bw", output_bw)):
        if not MIN_BITWIDTH <= value <= MAX_BITWIDTH:
            raise InputError(
                f"{flag} {value} is outside what AIMET supports ({MIN_BITWIDTH} to {MAX_BITWIDTH})",
                f"pass {flag} 8 (or 4 for weights: the zoo's W4A8)",
            )


class AdapterBase:
    """What the adapters of both AIMET generations share; each sets the AIMET entry points it uses."""

    generation = 0
    package = ""
    config_name = ""

    def __init__(self, aimet_logger) -> None:
        # AIMET logs every op it configures at INFO; keep the terminal for progress and the verdict
        aimet_logger.set_level_for_all_areas(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"aimet_")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        self.config_file = os.path.join(CONFIG_DIR, self.config_name)
        self._fold: Callable = lambda model, shapes: []  # set by the subclass

    def describe(self) -> Dict[str, object]:
        from ..environment import package_version

        return {"package": self.package, "version": package_version(self.package), "generation": self.generation,
                "config": self.config_name}

    def fold(self, model: nn.Module, input_shape) -> int:
        """Fold every BatchNorm into its convolution (AIMET replaces the BN with Identity); the number folded."""
        return len(self._fold(model, input_shape))

    def quantized_model(self, sim) -> nn.Module:
        return sim.model

    def export(self, sim, directory: str, prefix: str, dummy: torch.Tensor) -> List[str]:
        """The installed AIMET's own export (ONNX, encodings, .pth); the names of the files it wrote."""
        before = set(os.listdir(directory))
        sim.export(directory, prefix, dummy.cpu())
        return sorted(set(os.listdir(directory)) - before)

    # -- diagnose: one layer's quantizers at a time (AIMET QuantAnalyzer's per-layer method, our own loop) --------
    #
    # A *layer* is a module of the sim with at least one enabled quantizer, named as in the model. Each
    # generation says where its quantizer slots are (``_quantizer_slots``), how to turn one on or off
    # (``_set_slot``), and which modules form one layer (``_layer_of``: on aimet-torch 2.x the call sites
    # of a shared ReLU, which share one quantizer). The configured state is read once, the first time one
    # of these methods sees the sim: call them after calibration (AIMET 1.22 disables quantizers that got
    # no encoding during ``compute_encodings``).

    def match_sim_layout(self, model: nn.Module) -> None:
        """Give an FP32 model the module layout of this generation's sims, so its module names match the sim's
        one for one (AIMET 1.22 wraps modules where they are: nothing to do)."""

    def _quantizer_slots(self, sim) -> Dict[str, Dict[Tuple[str, object], object]]:
        """Per module of the sim: ``{(role, slot): state}`` for each quantizer slot, in its configured state."""
        raise NotImplementedError

    def _set_slot(self, sim, module: str, role: str, slot, state, on: bool) -> None:
        """Put the configured ``state`` back into a slot (``on``), or turn the slot's quantizer off."""
        raise NotImplementedError

    def _slot_enabled(self, state) -> bool:
        raise NotImplementedError

    def _layer_of(self, sim) -> Dict[str, str]:
        """Module name -> layer name where they differ (aimet-torch 2.x: ReLU call sites)."""
        return {}

    def _configured(self, sim) -> Dict[str, Dict[Tuple[str, object], object]]:
        if sim not in _CONFIGURED:
            _CONFIGURED[sim] = self._quantizer_slots(sim)
        return _CONFIGURED[sim]

    def quantized_layers(self, sim) -> Dict[str, Dict[str, List[str]]]:
        """Every layer with an enabled quantizer, in module order: ``{"modules": [...], "quantizers": [...]}``.

        ``modules`` are the modules of ``sim.model`` that make the layer (one, or a shared ReLU's call sites on
        aimet-torch 2.x); ``quantizers`` the roles of its enabled quantizers (input, weight, output).
        """
        layer_of = self._layer_of(sim)
        layers: Dict[str, Dict[str, List[str]]] = {}
        for module, slots in self._configured(sim).items():
            roles = {role for (role, _), state in slots.items() if self._slot_enabled(state)}
            if not roles:
                continue
            layer = layers.setdefault(layer_of.get(module, module), {"modules": [], "quantizers": []})
            layer["modules"].append(module)
            layer["quantizers"] = [r for r in ROLE_ORDER if r in roles or r in layer["quantizers"]]
        return layers

    def enable_only(self, sim, layers: Collection[str]) -> None:
        """Only the quantizers of ``layers`` (names from ``quantized_layers``) quantize; all others pass
        values through in FP32. ``restore_quantizers`` puts the configured state back."""
        known = self.quantized_layers(sim)
        unknown = sorted(set(layers) - set(known))
        if unknown:
            raise ValueError(f"not quantized layers of this sim: {unknown[:5]}")
        keep = {module for layer in layers for module in known[layer]["modules"]}
        for module, slots in self._configured(sim).items():
            for (role, slot), state in slots.items():
                self._set_slot(sim, module, role, slot, state, module in keep)

    def restore_quantizers(self, sim) -> None:
        """Every quantizer as configured and calibrated (undoes ``enable_only``)."""
        for module, slots in self._configured(sim).items():
            for (role, slot), state in slots.items():
                self._set_slot(sim, module, role, slot, state, True)
