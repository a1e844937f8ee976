"""Quantized evaluation with AIMET, as the zoo ran it (spec sections 8.2, 8.5, 9).

QuantSim with the TF (min/max) scheme and the per-channel config, weight encodings loaded from a 1.22-style
file and frozen (or computed from the weights), activation encodings from the first N validation crops in
loader order without flip, then evaluation of ``sim.model`` through the same ``predict`` as FP32.

The AIMET generation is hidden behind an adapter picked by what is installed: ``aimet_legacy`` for AIMET
1.22 (the ``legacy`` image), ``aimet_current`` for aimet-torch 2.x (the ``current`` image and CI).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .errors import EnvironmentProblem, InputError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantsim_config")
INPUT_SHAPE = (1, 3, 256, 192)
MIN_BITWIDTH, MAX_BITWIDTH = 4, 32  # what AIMET accepts for default_param_bw / default_output_bw
CALIBRATION_BATCHES = 12  # the zoo's callback runs batches 0..11 before its `i > 10` break
SEED_BATCH_SIZE = 32
DEFAULT_CALIBRATION_IMAGES = CALIBRATION_BATCHES * SEED_BATCH_SIZE  # 384

Encodings = Dict[str, List[dict]]


@dataclass
class QuantPlan:
    """What to quantize and how; ``encodings`` None computes weight encodings from the weights."""

    param_bw: int = 8
    output_bw: int = 8
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    encodings: Optional[str] = None
    fold_batch_norms: bool = True
    export_dir: Optional[str] = None

    @property
    def key(self) -> str:
        return f"w{self.param_bw}a{self.output_bw}"


@dataclass
class Quantized:
    """A calibrated sim and what was done to get it."""

    model: nn.Module
    sim: object
    info: Dict[str, object] = field(default_factory=dict)


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
        from .environment import package_version

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


def check_bitwidths(param_bw: int, output_bw: int) -> None:
    for flag, value in (("--default-param-bw", param_bw), ("--default-output-bw", output_bw)):
        if not MIN_BITWIDTH <= value <= MAX_BITWIDTH:
            raise InputError(
                f"{flag} {value} is outside what AIMET supports ({MIN_BITWIDTH} to {MAX_BITWIDTH})",
                f"pass {flag} 8 (or 4 for weights: the zoo's W4A8)",
            )


def load_adapter():
    """The adapter for the installed AIMET generation, or an error saying how to get one."""
    try:
        import aimet_torch  # noqa: F401
    except ImportError as error:
        raise EnvironmentProblem(
            f"AIMET is not importable ({error})",
            "use the legacy or current image, or `pip install aimet-torch` (2.x, Python >= 3.10); "
            "pass --fp32-only to evaluate FP32 without AIMET",
        ) from None
    try:
        import aimet_torch.common.defs  # noqa: F401  (aimet-torch 2.x)

        legacy = False
    except ImportError:
        legacy = True  # AIMET 1.x: QuantScheme lives in aimet_common.defs
    if legacy:
        from . import aimet_legacy

        return aimet_legacy.Adapter()
    from . import aimet_current

    return aimet_current.Adapter()


def read_encodings(path: str) -> Encodings:
    """A 1.22-style weight encodings file: a flat JSON dict ``{"<module>.<param>": [per-channel entries]}``.

    A file that nests its entries under ``param_encodings`` is read from there (AIMET 1.22 itself would
    silently match none of its keys).
    """
    try:
        with open(path) as f:
            content = json.load(f)
    except OSError as error:
        raise InputError(f"encodings file {path} cannot be read ({error.strerror})", "pass --encodings FILE") from None
    except ValueError as error:
        raise InputError(f"encodings file {path} is not JSON ({error})", "download it again") from None
    if isinstance(content, dict) and isinstance(content.get("param_encodings"), dict):
        content = content["param_encodings"]
    if not isinstance(content, dict) or not content:
        raise InputError(f"encodings file {path} holds no parameter encodings", "pass a 1.22-style .encodings file")
    for key, entries in content.items():
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"encodings file {path}: entry {key!r} is not a list of per-channel encodings", "check the file")
        missing = {"bitwidth", "is_symmetric", "min", "max", "offset", "scale"} - set(entries[0])
        if missing:
            raise InputError(f"encodings file {path}: entry {key!r} lacks {sorted(missing)}", "check the file")
    return content


def match_encodings(encodings: Encodings, channels: Dict[str, int], path: str) -> None:
    """Every key names a parameter quantizer of the sim, with one entry per output channel."""
    for key, entries in encodings.items():
        if key not in channels:
            near = [k for k in channels if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
            hint = f"; the sim has {near}" if near else ""
            raise InputError(
                f"encodings file {path}: key {key!r} matches no parameter quantizer of the model{hint}",
                "use the encodings that belong to the quantized checkpoint (same module names)",
            )
        if len(entries) != channels[key]:
            raise InputError(
                f"encodings file {path}: {key} has {len(entries)} entries for {channels[key]} output channels",
                "use the encodings that belong to the quantized checkpoint",
            )


def quantize(
    model: nn.Module,
    plan: QuantPlan,
    calibrate: Callable[[nn.Module], None],
    device: torch.device,
    adapter=None,
    accelerate: bool = False,
) -> Quantized:
    """Fold (optionally), build the sim, freeze weight encodings from a file (optionally), calibrate, export.

    ``accelerate`` quantizes the weights once, before calibration, instead of on every forward pass (where
    the installed AIMET can; not with ``export_dir``, which needs the weight quantizers): the same numbers.
    """
    check_bitwidths(plan.param_bw, plan.output_bw)
    adapter = adapter or load_adapter()
    model = copy.deepcopy(model).to(device).eval()
    info: Dict[str, object] = {"aimet": adapter.describe(), "param_bw": plan.param_bw, "output_bw": plan.output_bw}
    if plan.fold_batch_norms:
        info["folded_batch_norms"] = adapter.fold(model, INPUT_SHAPE)
    dummy = torch.randn(INPUT_SHAPE, device=device)  # only traced; its values never reach any statistics
    sim = adapter.create_sim(model, dummy, plan.param_bw, plan.output_bw)
    if plan.encodings is not None:
        encodings = read_encodings(plan.encodings)
        match_encodings(encodings, adapter.param_channels(sim), plan.encodings)
        adapter.load_param_encodings(sim, encodings, plan.encodings)
        info["frozen_param_encodings"] = len(encodings)
        bitwidths = sorted({int(v[0]["bitwidth"]) for v in encodings.values()})
        info["param_bitwidths_in_file"] = bitwidths
    else:
        info["frozen_param_encodings"] = 0
    info["quantizers"] = adapter.summary(sim)
    if accelerate and not plan.export_dir:
        info["weights_quantized_once"] = adapter.fold_param_quantizers(sim)
    adapter.compute_encodings(sim, calibrate)
    if plan.export_dir:
        os.makedirs(plan.export_dir, exist_ok=True)
        info["export"] = adapter.export(sim, plan.export_dir, f"hrnet_{plan.key}", dummy)
    return Quantized(adapter.quantized_model(sim), sim, info)
