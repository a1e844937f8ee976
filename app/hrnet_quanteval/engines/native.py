"""The native engine: this package's own pipeline, stage by stage the reference's arithmetic.

Every image is decoded once per run: calibration's uint8 crops are kept (``CropCache``) and read again by the one
evaluation pass, which takes every model of the run at once; normalisation, flip test and heatmap decoding run
on the model's device, one transfer per pass.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import evaluation
from ..data import CROP_BYTES, CropCache, crop_loader
from ..inference import Normalizer, predict_many
from ..progress import Progress, StageTimer
from ..runs import write_atomic
from ..runtypes import EvalSet, Evaluation, RunOptions
from .base import Calibrate, Engine

DEFAULT_CROP_CACHE_MB = 2048  # the zoo's 384 calibration crops take 57 MB; all of COCO val2017's 6352, 936 MB


class NativeEngine(Engine):
    """This package's own pipeline: uint8 crops decoded once per run, flip test and decoding on the device."""

    name = "native"

    def __init__(self, crop_cache_mb: int = DEFAULT_CROP_CACHE_MB) -> None:
        self.crop_cache_mb = crop_cache_mb
        self._caches: Dict[str, CropCache] = {}

    def _crops(self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device, keep: bool = True):
        """(uint8 crops, indices) for the first ``count`` instances in batches of ``--batch-size`` from sample 0:
        the whole batches already in memory (calibration's crops) from there, the rest decoded by the loader, and
        kept when ``keep``. The batches are the same either way, so no number depends on what was cached.

        Only calibration keeps its crops: the evaluation pass that follows reads them again. The evaluation
        pass is the last to read its own (every model of the run goes through it at once), and keeping them
        would cost a first write to every page of the store (COCO: 936 MB, about a second of CPU time taken from
        the loaders) for nothing. The store is sized for what is kept (pinned memory on CUDA is taken whole)."""
        key = evalset.annotation_file
        cache = self._caches.get(key)
        budget = min(count * CROP_BYTES, self.crop_cache_mb * 2**20)
        if keep and (cache is None or cache.capacity * CROP_BYTES < budget):
            cache = self._caches[key] = CropCache(len(evalset.instances), budget, pin_memory=device.type == "cuda")
        elif cache is None:
            cache = CropCache(len(evalset.instances), 0)  # nothing kept, nothing to read
        size = options.batch_size
        cached = cache.prefix(count)
        start = count if cached == count else cached // size * size
        yield from cache.batches(start, size)
        if start == count:
            return
        instances = evalset.instances.rows(start, count)
        for crops, index in crop_loader(instances, size, options.workers, device.type == "cuda"):
            index = index + start
            if keep:
                cache.put(crops, index)
            yield crops, index

    def evaluate(
        self, name: str, model: nn.Module, evalset: EvalSet, device: torch.device, run_dir: str,
        options: RunOptions, timer: StageTimer,
    ) -> Evaluation:
        """Flip-test inference on every instance, results file, COCOeval."""
        return self.evaluate_many([(name, model)], evalset, device, run_dir, options, timer)[name]

    def evaluate_many(
        self, models: Sequence[Tuple[str, nn.Module]], evalset: EvalSet, device: torch.device, run_dir: str,
        options: RunOptions, timer: StageTimer,
    ) -> Dict[str, Evaluation]:
        """Every model on each batch as it arrives: one pass over the data for all of them, so the models' work
        overlaps the decoding of the next batches; then each model's results file and COCOeval."""
        instances = evalset.instances
        names = [name for name, _ in models]
        progress = Progress(len(instances), f"{' + '.join(names)} evaluation", quiet=options.quiet)
        preds = predict_many(
            [model.to(device) for _, model in models], self._crops(evalset, len(instances), options, device, keep=False),
            len(instances), instances.heatmap_to_image(), device, on_batch=progress.update, timer=timer,
        )
        progress.close()
        return self._score_all(list(zip(names, preds)), evalset, run_dir, timer)

    def _score_all(self, named: List[Tuple[str, np.ndarray]], evalset: EvalSet, run_dir: str,
                   timer: StageTimer) -> Dict[str, Evaluation]:
        """Each model's scoring; with several models, all but the last in forked processes at the same time
        (rescoring, NMS and COCOeval are single-threaded Python). A child that fails leaves its model to be
        scored here, so a problem there costs time, never a result."""
        start = time.perf_counter()
        children = []
        if len(named) > 1 and "fork" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("fork")
            for name, preds in named[:-1]:
                reader, writer = context.Pipe(duplex=False)
                child = context.Process(target=self._score_in_child, args=(writer, name, preds, evalset, run_dir),
                                        daemon=True)
                child.start()
                writer.close()
                children.append((name, preds, child, reader))
        done = {}
        for name, preds in named[len(children):]:
            done[name] = self._score(name, preds, evalset, run_dir)
        for name, preds, child, reader in children:
            try:
                answer = reader.recv()
            except EOFError:
                answer = None
            child.join()
            if isinstance(answer, dict):
                done[name] = Evaluation(answer["stats"], preds, answer["results_file"])
            else:
                done[name] = self._score(name, preds, evalset, run_dir)
        timer.add("evaluation", start)
        return {name: done[name] for name, _ in named}

    def _score_in_child(self, writer, name: str, preds: np.ndarray, evalset: EvalSet, run_dir: str) -> None:
        """Runs in a forked process: score one model, send back its stats, and leave without any cleanup of
        the parent's (temporary folders, loaders) running here."""
        try:
            result = self._score(name, preds, evalset, run_dir)
            writer.send({"stats": result.stats, "results_file": result.results_file})
        except BaseException:  # noqa: BLE001 - the parent scores this model itself
            pass
        finally:
            writer.close()
            os._exit(0)

    def _score(self, name: str, preds: np.ndarray, evalset: EvalSet, run_dir: str) -> Evaluation:
        """Rescoring, OKS-NMS, the results file and COCOeval of one model's joints."""
        instances = evalset.instances
        results = evaluation.coco_results(instances.image_ids, preds, instances.centers, instances.scales, instances.areas)
        results_file = os.path.join(run_dir, f"keypoints_{name}_results.json")
        evaluation.write_results(results_file, results)
        image_ids = instances.evaluated_image_ids if evalset.max_images is not None else None
        stats, log = evaluation.coco_stats(evalset.coco, results_file, image_ids)
        write_atomic(os.path.join(run_dir, f"cocoeval_{name}.txt"), log)
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
