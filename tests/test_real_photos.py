"""Real COCO photographs with their official annotations (../shared/data/coco-real-mini: train2017, not val2017).

Real JPEG decoding, real image sizes, crowd regions, people with one to three keypoints and people with none:
the evaluation through the project equals pycocotools called directly, the two engines write byte-identical
results files, and ``eval`` runs end to end on a set that is not val2017 (no published target).
"""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli

from hrnet_quanteval import data, evaluation
from hrnet_quanteval.cli import main
from hrnet_quanteval.model import HRNetSpec, StageSpec, build_hrnet
from hrnet_quanteval.validation import open_dataset

REAL_MINI = "coco-real-mini"
TEN_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")  # pycocotools' stats order


@pytest.fixture(scope="module")
def real_mini():
    """(annotation file, image folder) of the real photographs."""
    for base in (os.environ.get("HRNET_QUANTEVAL_SHARED"), os.path.join(ROOT, "..", "shared"), os.path.join(ROOT, "shared")):
        folder = os.path.join(base, "data", REAL_MINI) if base else None
        if folder and os.path.isdir(folder):
            return (os.path.join(folder, "annotations", "person_keypoints_train2017.json"), os.path.join(folder, "train2017"))
    pytest.fail("../shared/data/coco-real-mini is needed (the project's test data); set HRNET_QUANTEVAL_SHARED to its parent")


def test_the_real_set_is_what_its_source_says(real_mini):
    annotation_file, image_dir = real_mini
    with open(annotation_file) as f:
        content = json.load(f)
    assert (len(content["images"]), len(content["annotations"])) == (80, 172)
    evalset = open_dataset(annotation_file=annotation_file, image_dir=image_dir)
    # non-crowd, with keypoints: the loader's rule (spec 2.3) keeps exactly these
    kept = [a["id"] for a in content["annotations"] if not a["iscrowd"] and max(a["keypoints"]) > 0]
    assert sorted(evalset.instances.annotation_ids.tolist()) == sorted(kept) and len(kept) == 86
    assert len(evalset.instances.evaluated_image_ids) == 80


def test_ground_truth_as_predictions_gives_pycocotools_own_stats(real_mini, tmp_path):
    """Every kept person's own keypoints as the prediction, through rescoring, OKS-NMS, the results file and the
    project's COCOeval call, against pycocotools given the same detections directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotation_file, image_dir = real_mini
    evalset = open_dataset(annotation_file=annotation_file, image_dir=image_dir)
    anns = {a["id"]: a for a in evalset.coco.dataset["annotations"]}
    preds = np.zeros((len(evalset.instances), 17, 3), np.float32)
    for k, ann_id in enumerate(evalset.instances.annotation_ids):
        kps = np.asarray(anns[int(ann_id)]["keypoints"], np.float32).reshape(17, 3)
        preds[k, :, :2] = kps[:, :2]
        preds[k, :, 2] = (kps[:, 2] > 0).astype(np.float32)  # confident where labelled
    inst = evalset.instances
    results = evaluation.coco_results(inst.image_ids, preds, inst.centers, inst.scales, inst.areas)
    path = str(tmp_path / "gt.json")
    evaluation.write_results(path, results)
    ours, _ = evaluation.coco_stats(evalset.coco, path)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)  # pycocotools' own reading of the file, its own defaults
        direct = [{"image_id": r["image_id"], "category_id": 1, "keypoints": r["keypoints"], "score": r["score"]}
                  for r in results]
        evaluator = COCOeval(gt, gt.loadRes(direct), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # two people of one image with one labelled joint each and the rest at (0, 0) overlap by OKS > 0.9:
    # the reference's NMS keeps one of them, so 85 of the 86 people are detections
    assert len(results) == 85
    assert [ours[name] for name in TEN_STATS] == [float(v) for v in evaluator.stats]
    assert ours["AP"] > 0.95  # the people are where their annotations say


def _narrow_hrnet(seed: int) -> torch.nn.Module:
    """HRNet with W32's topology at half its width (16/32/64/128 channels), random weights, real BN statistics."""
    spec = HRNetSpec(stem_channels=32, layer1_planes=32, stages=(
        StageSpec(1, (4, 4), (16, 32)), StageSpec(4, (4, 4, 4), (16, 32, 64)), StageSpec(3, (4, 4, 4, 4), (16, 32, 64, 128)),
    ))
    torch.manual_seed(seed)
    model = build_hrnet(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_both_engines_write_byte_identical_results_files_on_real_photos(real_mini, hrnet_lib, tmp_path, monkeypatch, capsys):
    annotation_file, image_dir = real_mini
    ckpt = str(tmp_path / "hrnet.pth")
    torch.save(_narrow_hrnet(11).state_dict(), ckpt)
    monkeypatch.setenv("HRNET_LIB", hrnet_lib)
    code = main(["parity", "--annotation-file", annotation_file, "--image-dir", image_dir, "--checkpoint", ckpt,
                 "--use-cuda", "false", "--workers", "0", "--quiet", "--results-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0, out
    (run,) = os.listdir(tmp_path / "r")
    native = (tmp_path / "r" / run / "native" / "keypoints_fp32_results.json").read_bytes()
    reference = (tmp_path / "r" / run / "reference" / "keypoints_fp32_results.json").read_bytes()
    assert native == reference and len(json.loads(native)) == 86
    with open(tmp_path / "r" / run / "report.json") as f:
        comparison = json.load(f)["parity"]["fp32"]
    assert comparison["max_abs_px"] == 0.0 and comparison["max_abs_maxval"] == 0.0


@pytest.mark.aimet
def test_eval_fp32_and_w8a8_on_real_photos_has_no_published_target(real_mini, tiny_checkpoint, tmp_path):
    annotation_file, image_dir = real_mini
    out = run_cli("eval", "--annotation-file", annotation_file, "--image-dir", image_dir, "--fp32-checkpoint",
                  tiny_checkpoint, "--use-cuda", "false", "--workers", "0", "--calibration-images", "16",
                  "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "no published target" in out.stdout and "Traceback" not in out.stderr
    (run,) = os.listdir(tmp_path / "r")
    with open(tmp_path / "r" / run / "report.json") as f:
        report = json.load(f)
    assert set(report["models"]) == {"fp32", "w8a8"} and report["verdict"]["status"] == "no_target"
    assert report["dataset"]["instances"] == 86 and report["dataset"]["images"] == 80
    for model in ("fp32", "w8a8"):
        assert len(json.loads((tmp_path / "r" / run / f"keypoints_{model}_results.json").read_text())) == 86


def test_a_plain_unzip_layout_evaluates(real_mini, tiny_checkpoint, tmp_path):
    """``<root>/val2017/`` beside ``<root>/annotations/`` (what unzipping COCO gives) is a dataset too."""
    annotation_file, image_dir = real_mini
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    os.symlink(annotation_file, root / data.ANNOTATION_FILE)
    os.symlink(image_dir, root / "val2017")
    out = run_cli("eval", "--evaluation-dataset", str(root), "--fp32-checkpoint", tiny_checkpoint, "--fp32-only",
                  "--use-cuda", "false", "--workers", "0", "--max-images", "6", "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(tmp_path / "r")
    with open(tmp_path / "r" / run / "report.json") as f:
        assert json.load(f)["dataset"]["image_dir"] == str(root / "val2017")
