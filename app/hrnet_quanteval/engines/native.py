"""The native engine: this package's own pipeline, stage by stage the reference's arithmetic.

uint8 crops are decoded once per run and kept for calibration and the quantized pass (``CropCache``);
normalisation, flip test and heatmap decoding run on the model's device, one transfer per pass.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .. import evaluation
from ..data import CropCache, crop_loader
from ..inference import Normalizer, predict
from ..progress import Progress, StageTimer
from ..runs import write_atomic
from ..runtypes import EvalSet, Evaluation, RunOptions
from .base import Calibrate, Engine

DEFAULT_CROP_CACHE_MB = 2048  # COCO val2017's 6352 crops take 936 MB


class NativeEngine(Engine):
    """This package's own pipeline: uint8 crops decoded once per run, flip test and decoding on the device."""

    name = "native"

    def __init__(self, crop_cache_mb: int = DEFAULT_CROP_CACHE_MB) -> None:
        self.crop_cache_mb = crop_cache_mb
        self._caches: Dict[str, CropCache] = {}

    def _crops(self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device):
        """(uint8 crops, indices) for the first ``count`` instances: from memory when cached, else decoded and cached."""
        key = evalset.annotation_file
        if key not in self._caches:
            self._caches[key] = CropCache(
                len(evalset.instances), self.crop_cache_mb * 2**20, pin_memory=device.type == "cuda"
            )
        cache = self._caches[key]
        if cache.holds(count):
            yield from cache.batches(count, options.batch_size)
            return
        instances = evalset.instances if count == len(evalset.instances) else evalset.instances.head(count)
        for crops, index in crop_loader(instances, options.batch_size, options.workers, device.type == "cuda"):
            cache.put(crops, index)
            yield crops, index

    def evaluate(
        self, name: str, model: nn.Module, evalset: EvalSet, device: torch.device, run_dir: str,
        options: RunOptions, timer: StageTimer,
    ) -> Evaluation:
        """Flip-test inference on every instance, results file, COCOeval."""
        instances = evalset.instances
        progress = Progress(len(instances), f"{name} evaluation", quiet=options.quiet)
        preds = predict(
            model.to(device), self._crops(evalset, len(instances), options, device), len(instances),
            instances.heatmap_to_image(), device, on_batch=progress.update, timer=timer,
        )
        progress.close()
        start = time.perf_counter()
        results = evaluation.coco_results(instances.image_ids, preds, instances.centers, instances.scales, instances.areas)
        results_file = os.path.join(run_dir, f"keypoints_{name}_results.json")
        evaluation.write_results(results_file, results)
        image_ids = instances.evaluated_image_ids if evalset.max_images is not None else None
        stats, log = evaluation.coco_stats(evalset.coco, results_file, image_ids)
        write_atomic(os.path.join(run_dir, f"cocoeval_{name}.txt"), log)
        timer.add("evaluation", start)
        return Evaluation(stats, preds, results_file)

    def calibration(
        self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device,
        on_batch: Optional[Callable[[int], None]] = None,
    ) -> Calibrate:
        """The zoo's calibration callback: forward passes without flip over the first ``count`` crops in loader order.

        With the min/max scheme only the set of crops matters, not how it is split into batches.
        """
        normalize = Normalizer(device)

        def calibrate(model: nn.Module) -> None:
            with torch.no_grad():
                for batch, index in self._crops(evalset, count, options, device):
                    model(normalize(batch.to(device, non_blocking=True)))
                    if on_batch is not None:
                        on_batch(len(index))

        return calibrate
