import json
import math
import os

import numpy as np
import pytest

from hrnet_quanteval import data, evaluation
from hrnet_quanteval.evaluation import SIGMAS, STAT_NAMES, coco_results, coco_stats, oks, oks_nms, rescore


def test_rescore_means_maxvals_above_threshold():
    maxvals = np.zeros((3, 17), dtype=np.float32)
    maxvals[0, :4] = [0.5, 0.1, 0.3, 0.9]  # 0.1 is below 0.2: mean of 0.5, 0.3, 0.9
    maxvals[1, :] = 0.1  # nothing above: score 0
    maxvals[2, 0] = np.float32(0.2)  # f32(0.2) = 0.2000000030 > 0.2 in f64, as with numpy 1.x
    scores = rescore(maxvals)
    assert scores.dtype == np.float64
    expected = (float(np.float32(0.5)) + float(np.float32(0.3)) + float(np.float32(0.9))) / 3
    assert scores[0] == expected
    assert scores[1] == 0.0
    assert scores[2] == float(np.float32(0.2))


def test_rescore_multiplies_box_scores():
    maxvals = np.full((2, 17), 0.5, dtype=np.float32)
    np.testing.assert_array_equal(rescore(maxvals, np.array([1.0, 0.5])), [0.5, 0.25])


def _kpts(points, score=1.0):
    row = np.zeros((17, 3), dtype=np.float32)
    row[:, :2] = points
    row[:, 2] = score
    return row.reshape(-1)


def test_oks_hand_computed():
    base = np.stack([np.arange(17.0) * 10, np.full(17, 50.0)], axis=1)
    moved = base.copy()
    moved[5, 0] += 3.0  # one shoulder 3 px off
    area = 10000.0
    got = oks(_kpts(base), _kpts(moved)[None], area, np.array([area]))
    e = 9.0 / (2 * SIGMAS[5]) ** 2 / (area + np.spacing(1)) / 2
    assert got[0] == pytest.approx((16 + math.exp(-e)) / 17, rel=1e-12)


def test_oks_nms_drops_duplicates_and_keeps_distinct_people():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, (17, 2))
    b = a + 0.5  # nearly the same person: OKS > 0.9
    c = a + 200  # somebody else
    kpts = np.stack([_kpts(a), _kpts(b), _kpts(c)])
    areas = np.full(3, 10000.0)
    assert oks_nms(kpts, np.array([0.8, 0.9, 0.5]), areas) == [1, 2]
    assert oks_nms(kpts, np.array([0.9, 0.8, 0.5]), areas) == [0, 2]
    assert oks_nms(kpts, np.array([0.1, 0.2, 0.3]), areas) == [2, 1]


def test_oks_nms_threshold_is_inclusive_for_keeping():
    a = np.zeros((17, 2))
    kpts = np.stack([_kpts(a), _kpts(a)])  # OKS exactly 1.0
    areas = np.full(2, 100.0)
    assert oks_nms(kpts, np.array([0.5, 0.4]), areas, threshold=1.0) == [0, 1]
    assert oks_nms(kpts, np.array([0.5, 0.4]), areas, threshold=0.999) == [0]


def test_results_are_grouped_by_image_in_first_appearance_order():
    preds = np.zeros((4, 17, 3), dtype=np.float32)
    preds[:, :, 0] = np.arange(4)[:, None] * 300.0  # far apart: nobody suppressed
    preds[:, :, 2] = np.array([0.3, 0.9, 0.5, 0.7], dtype=np.float32)[:, None]
    image_ids = np.array([7, 3, 7, 3])
    centers = np.zeros((4, 2), np.float32)
    scales = np.ones((4, 2), np.float32)
    results = coco_results(image_ids, preds, centers, scales, np.full(4, 1e4))
    assert [r["image_id"] for r in results] == [7, 7, 3, 3]
    assert [r["score"] for r in results] == pytest.approx([0.5, 0.3, 0.9, 0.7])
    assert sorted(results[0]) == ["category_id", "center", "image_id", "keypoints", "scale", "score"]


def test_ground_truth_as_predictions_scores_ap_one(synth_root, tmp_path):
    ann_file = f"{synth_root}/{data.ANNOTATION_FILE}"
    coco = data.load_coco(ann_file)
    instances = data.select_instances(coco, os.path.join(synth_root, data.IMAGE_DIR))
    preds = np.zeros((len(instances), 17, 3), dtype=np.float32)
    for k, ann_id in enumerate(instances.annotation_ids):
        kp = np.array(coco.anns[int(ann_id)]["keypoints"], dtype=np.float32).reshape(17, 3)
        preds[k, :, :2] = kp[:, :2]
        preds[k, :, 2] = 1.0
    results = coco_results(instances.image_ids, preds, instances.centers, instances.scales, instances.areas)
    path = str(tmp_path / "gt_results.json")
    evaluation.write_results(path, results)
    stats, log = coco_stats(coco, path)
    assert list(stats) == list(STAT_NAMES)
    assert stats["AP"] == 1.0 and stats["AR"] == 1.0 and stats["AP50"] == 1.0
    assert "Average Precision" in log
    with open(path) as f:
        assert len(json.load(f)) == len(instances)


def test_results_file_writes_lossless_floats(tmp_path):
    value = float(np.float32(1.2345))
    path = str(tmp_path / "r.json")
    evaluation.write_results(path, [{"score": value, "keypoints": [value]}])
    text = open(path).read()
    assert "1.2345000505447388" in text and json.loads(text)[0]["score"] == value
