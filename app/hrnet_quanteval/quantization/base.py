"""What the adapters of both AIMET generations share, and the settings both use."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Callable, Dict, List

import torch
from torch import nn

from ..errors import InputError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "quantsim_config")
INPUT_SHAPE = (1, 3, 256, 192)
MIN_BITWIDTH, MAX_BITWIDTH = 4, 32  # what AIMET accepts for default_param_bw / default_output_bw


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
