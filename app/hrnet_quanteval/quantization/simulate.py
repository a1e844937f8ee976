"""Quantized evaluation with AIMET, as the zoo ran it (spec sections 8.2, 8.5, 9).

QuantSim with the TF (min/max) scheme and the per-channel config, weight encodings loaded from a 1.22-style
file and frozen (or computed from the weights), activation encodings from the first N validation crops in
loader order without flip, then evaluation of ``sim.model`` through the same ``predict`` as FP32.

The AIMET generation is hidden behind an adapter picked by what is installed: ``aimet_legacy`` for AIMET
1.22 (the ``legacy`` image), ``aimet_current`` for aimet-torch 2.x (the ``current`` image and CI).
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..errors import EnvironmentProblem
from .base import INPUT_SHAPE, check_bitwidths
from .encodings import EncodingsFile, match_encodings, model_param_channels, read_encodings

CALIBRATION_BATCHES = 12  # the zoo's callback runs batches 0..11 before its `i > 10` break
SEED_BATCH_SIZE = 32
DEFAULT_CALIBRATION_IMAGES = CALIBRATION_BATCHES * SEED_BATCH_SIZE  # 384


@dataclass
class QuantPlan:
    """What to quantize and how; ``encodings`` None computes weight encodings from the weights."""

    param_bw: int = 8
    output_bw: int = 8
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    encodings: Optional[str] = None
    fold_batch_norms: bool = True
    export_dir: Optional[str] = None
    checked_encodings: Optional[EncodingsFile] = None  # set by ``check_plan``: read and checked once

    @property
    def key(self) -> str:
        return f"w{self.param_bw}a{self.output_bw}"


@dataclass
class Quantized:
    """A calibrated sim and what was done to get it."""

    model: nn.Module
    sim: object
    info: Dict[str, object] = field(default_factory=dict)


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


def check_plan(plan: QuantPlan, model: nn.Module) -> None:
    """Everything about the plan that can be checked without AIMET's compute: the encodings file, entry by
    entry, against the convolutions of the model it will quantize (exit 2 before the FP32 pass)."""
    check_bitwidths(plan.param_bw, plan.output_bw)
    if plan.encodings is not None and plan.checked_encodings is None:
        encodings = read_encodings(plan.encodings)
        channels = model_param_channels(model)
        match_encodings(encodings, channels)
        plan.checked_encodings = encodings
        for notice in encodings.notices:
            print(f"notice: {notice}")


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
    What the report says was frozen, and the quantizer counts, are read from the sim, never from the file.
    """
    check_plan(plan, model)
    adapter = adapter or load_adapter()
    start = time.perf_counter()
    model = copy.deepcopy(model).to(device).eval()
    info: Dict[str, object] = {"aimet": adapter.describe(), "param_bw": plan.param_bw, "output_bw": plan.output_bw}
    if plan.fold_batch_norms:
        info["folded_batch_norms"] = adapter.fold(model, INPUT_SHAPE)
    dummy = torch.randn(INPUT_SHAPE, device=device)  # only traced; its values never reach any statistics
    sim = adapter.create_sim(model, dummy, plan.param_bw, plan.output_bw)
    encodings = plan.checked_encodings
    if encodings is not None:
        channels = adapter.param_channels(sim)
        _, other = match_encodings(encodings, channels, adapter.enabled_param_keys(sim))
        adapter.load_param_encodings(sim, encodings)
        info["encodings_layout"] = encodings.layout
        info["param_bitwidths_in_file"] = encodings.bitwidths
        if other:
            info["encodings_for_disabled_quantizers"] = len(other)
            print(f"notice: {plan.encodings}: {len(other)} keys name parameters whose quantizer is disabled "
                  f"(e.g. {other[0]}); set and frozen as AIMET 1.22 does, they quantize nothing")
    info["frozen_param_encodings"] = adapter.frozen_param_count(sim) if encodings is not None else 0
    if accelerate and not plan.export_dir:
        info["weights_quantized_once"] = adapter.fold_param_quantizers(sim)
    info["sim_seconds"] = time.perf_counter() - start  # BN fold, sim, frozen encodings: the sim's construction
    start = time.perf_counter()
    adapter.compute_encodings(sim, calibrate)
    info["calibration_seconds"] = time.perf_counter() - start
    info["quantizers"] = adapter.summary(sim)  # after calibration: 1.22 disables quantizers without an encoding
    if plan.export_dir:
        os.makedirs(plan.export_dir, exist_ok=True)
        info["export"] = adapter.export(sim, plan.export_dir, f"hrnet_{plan.key}", dummy)
    return Quantized(adapter.quantized_model(sim), sim, info)
