"""The values a run passes between its stages: the evaluation set, run options, one model's evaluation, the outcome.

A low module: the engines, the orchestrator (``run``) and the commands import it; it imports no stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .data import Instances
from .files import sha256_file
from .progress import StageTimer


@dataclass
class EvalSet:
    """The dataset as one run evaluates it: where it is, pycocotools' index and the person instances."""

    root: Optional[str]  # the COCO folder given, if one was (else --annotation-file and --image-dir)
    annotation_file: str
    coco: object
    instances: Instances
    max_images: Optional[int]
    image_dir: str = ""
    images_sha256: Optional[str] = None  # every evaluated image's name and content, in loader order
    _annotation_sha256: Optional[str] = field(default=None, repr=False)

    def describe(self) -> Dict[str, object]:
        if self._annotation_sha256 is None:  # COCO's file is 10 MB: hash it once per run, not per report section
            self._annotation_sha256 = sha256_file(self.annotation_file)
        return {
            "root": self.root,
            "annotation_file": self.annotation_file,
            "image_dir": self.image_dir,
            "annotation_sha256": self._annotation_sha256,
            "images_sha256": self.images_sha256,
            "images": len(self.instances.evaluated_image_ids),
            "instances": len(self.instances),
            "max_images": self.max_images,
        }


@dataclass
class RunOptions:
    """How a run executes; none of these changes a number."""

    batch_size: int = 32
    workers: int = 0
    quiet: bool = False


@dataclass
class Evaluation:
    """One model's evaluation: the ten stats, every instance's joints (N, 17, 3), the results file."""

    stats: Dict[str, float]
    preds: np.ndarray
    results_file: str


@dataclass
class Outcome:
    """What the models scored, how long each stage took, and what quantization did."""

    models: Dict[str, Dict[str, float]] = field(default_factory=dict)
    timer: Optional[StageTimer] = None
    quantization: Dict[str, object] = field(default_factory=dict)
    engine: str = "native"
    evaluations: Dict[str, Evaluation] = field(default_factory=dict)
    notes: Dict[str, object] = field(default_factory=dict)
    quantized_models: Dict[str, object] = field(default_factory=dict)  # the calibrated sims' models, by key
