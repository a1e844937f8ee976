"""What an evaluation engine is: evaluate a model on an evaluation set, and give the calibration callback."""
from __future__ import annotations

import abc
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..progress import StageTimer
from ..runtypes import EvalSet, Evaluation, RunOptions

Calibrate = Callable[[nn.Module], None]


class Engine(abc.ABC):
    """An evaluation engine. ``name`` appears in reports; the two methods are all a run needs of it."""

    name = ""

    @abc.abstractmethod
    def evaluate(
        self, name: str, model: nn.Module, evalset: EvalSet, device: torch.device, run_dir: str,
        options: RunOptions, timer: StageTimer,
    ) -> Evaluation:
        """Flip-test inference on every instance, ``keypoints_<name>_results.json`` and the ten COCO stats."""

    def evaluate_many(
        self, models: Sequence[Tuple[str, nn.Module]], evalset: EvalSet, device: torch.device, run_dir: str,
        options: RunOptions, timer: StageTimer,
    ) -> Dict[str, Evaluation]:
        """Several models on one evaluation set, each as ``evaluate`` would; an engine that can share one pass
        over the data between them overrides this."""
        return {name: self.evaluate(name, model, evalset, device, run_dir, options, timer) for name, model in models}

    @abc.abstractmethod
    def calibration(
        self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device,
        on_batch: Optional[Callable[[int], None]] = None,
    ) -> Calibrate:
        """The zoo's calibration callback: forward passes without flip over the first ``count`` crops in loader order."""
