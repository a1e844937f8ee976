"""Rescoring, OKS-NMS, the COCO results file and pycocotools COCOeval (spec section 6).

The numerics follow the reference under numpy 1.x: rescoring accumulates f32 maxvals in f64 in joint
order, OKS takes coordinate differences in f32 and the rest in f64, NMS orders by numpy's argsort.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .runs import write_atomic

IN_VIS_THRESHOLD = 0.2
OKS_THRESHOLD = 0.9
# COCO keypoint sigmas (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]) / 10.0
VARIANCES = (SIGMAS * 2) ** 2
# pycocotools' stats order, under the names this project reports
STAT_NAMES: Tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def rescore(maxvals: np.ndarray, box_scores: Optional[np.ndarray] = None, threshold: float = IN_VIS_THRESHOLD) -> np.ndarray:
    """Instance score: mean of the joint maxvals above ``threshold`` (0 when none is), times the box score.

    (N, J) f32 in, (N,) f64 out. The comparison and the running sum are f64, summed joint by joint in
    order, exactly as the reference's Python loop does.
    """
    values = np.asarray(maxvals, dtype=np.float32).astype(np.float64)
    total = np.zeros(values.shape[0], dtype=np.float64)
    count = np.zeros(values.shape[0], dtype=np.int64)
    for j in range(values.shape[1]):
        above = values[:, j] > threshold
        total = np.where(above, total + values[:, j], total)
        count += above
    score = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    if box_scores is not None:
        score = score * np.asarray(box_scores, dtype=np.float64)
    return score


def oks(reference: np.ndarray, others: np.ndarray, area_ref, areas) -> np.ndarray:
    """Object keypoint similarity over all joints, between keypoint rows ``(..., J*3)`` that broadcast.

    ``oks(row, rows, area, areas)`` compares one row with each of ``rows``; ``oks(rows[:, None], rows[None],
    areas[:, None], areas[None])`` gives the symmetric matrix of all pairs. Dtypes as the reference: the
    coordinate offsets and their squared lengths are f32, the rest f64; the per-joint terms of each pair lie
    contiguous in memory, so ``exp`` and the sum over joints run exactly as on the reference's single rows.
    """
    ref = np.asarray(reference)
    oth = np.asarray(others)
    offset = oth.reshape(oth.shape[:-1] + (-1, 3))[..., :2] - ref.reshape(ref.shape[:-1] + (-1, 3))[..., :2]
    squared = offset[..., 0] ** 2 + offset[..., 1] ** 2  # (..., J)
    pair_area = (np.add(area_ref, areas) / 2 + np.spacing(1))[..., None]
    falloff = squared / VARIANCES / pair_area / 2
    return np.exp(-falloff).sum(axis=-1) / falloff.shape[-1]


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float = OKS_THRESHOLD) -> List[int]:
    """Greedy NMS by descending score: drop every instance whose OKS with a kept one exceeds ``threshold``.

    ``keypoints`` is (n, J*3) f32. Returns kept indices in keep order. The ranking is numpy's default
    (unstable) ascending argsort reversed, which decides ties as the reference does; the OKS of every pair
    is taken once up front. An instance stays only while its OKS with each kept one is ``<= threshold``
    (so a NaN OKS drops it, as upstream).
    """
    ranked = np.asarray(scores).argsort()[::-1]
    rows = np.ascontiguousarray(keypoints[ranked])
    sizes = np.asarray(areas)[ranked]
    similarity = oks(rows[:, None], rows[None], sizes[:, None], sizes[None])  # (n, n), symmetric
    dropped = np.zeros(len(ranked), dtype=bool)
    keep: List[int] = []
    for rank, index in enumerate(ranked):
        if dropped[rank]:
            continue
        keep.append(int(index))
        dropped |= ~(similarity[rank] <= threshold)
    return keep


def coco_results(
    image_ids: np.ndarray,
    preds: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    areas: np.ndarray,
    box_scores: Optional[np.ndarray] = None,
) -> List[dict]:
    """COCO keypoint results in the reference's order: images by first appearance, persons in keep order."""
    scores = rescore(preds[:, :, 2], box_scores)
    groups: "OrderedDict[int, List[int]]" = OrderedDict()
    for k, image_id in enumerate(image_ids):
        groups.setdefault(int(image_id), []).append(k)
    flat = preds.reshape(len(preds), -1)
    results = []
    for image_id, members in groups.items():
        rows = np.asarray(members)
        for kept in oks_nms(flat[rows], scores[rows], areas[rows]):
            k = rows[kept]
            results.append(
                {
                    "category_id": 1,
                    "center": [float(v) for v in centers[k]],
                    "image_id": image_id,
                    "keypoints": [float(v) for v in flat[k]],
                    "scale": [float(v) for v in scales[k]],
                    "score": float(scores[k]),
                }
            )
    return results


def write_results(path: str, results: Sequence[dict]) -> None:
    """Write the results list as the reference does: sorted keys, indent 4, lossless float reprs."""
    write_atomic(path, json.dumps(list(results), sort_keys=True, indent=4))


def coco_stats(coco_gt, results_file: str, image_ids: Optional[Iterable[int]] = None) -> Tuple[Dict[str, float], str]:
    """The ten COCOeval keypoint stats for a results file, and pycocotools' printed summary.

    ``image_ids`` restricts the evaluation to a subset (partial runs); by default every image of the
    annotation file counts, as in the reference.
    """
    from pycocotools.cocoeval import COCOeval

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        with open(results_file) as f:
            results = json.load(f)
        if not results:
            raise ValueError(f"{results_file} holds no detections")
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}, log.getvalue()
