"""What people read: the table, the verdict at the tolerance edges, report.json, the pictures, plain logs."""
import io
import json
import os

import cv2
import pytest
from conftest import HAVE_AIMET, run_cli

from hrnet_quanteval import report, visualize
from hrnet_quanteval.evaluation import STAT_NAMES
from hrnet_quanteval.progress import Progress

FULL = {"images": 5000, "instances": 6352, "max_images": None}
TOP_LEVEL = {"schema_version", "run_id", "status", "command", "models", "published", "verdict", "timings",
             "environment", "artifacts", "dataset", "settings", "results_files", "quantization", "files"}
ENVIRONMENT = {"python", "torch", "cuda", "cudnn", "aimet", "numpy", "opencv", "pycocotools", "stack", "app_version",
               "app_git_commit", "hrnet_commit", "patches_applied", "device"}


def _models(fp32_ap=0.765, fp32_ar=0.793, q_ap=0.762, q_ar=0.791, key="w4a8"):
    base = {name: 0.5 for name in STAT_NAMES}
    return {"fp32": {**base, "AP": fp32_ap, "AR": fp32_ar}, key: {**base, "AP": q_ap, "AR": q_ar}}


@pytest.mark.parametrize("ap, stack, status", [
    (0.7655, "legacy", "reproduced"), (0.7645, "legacy", "reproduced"), (0.76551, "legacy", "not_reproduced"),
    (0.76449, "legacy", "not_reproduced"), (0.7675, "current", "reproduced"), (0.76751, "current", "not_reproduced"),
])
def test_verdict_at_the_tolerance_edges(ap, stack, status):
    outcome = report.verdict(_models(fp32_ap=ap), FULL, stack)
    assert outcome["status"] == status
    assert outcome["tolerance"] == pytest.approx(0.0005 if stack == "legacy" else 0.0025)
    if status == "not_reproduced":
        assert "fp32 AP" in outcome["text"] and f"{ap:.4f}" in outcome["text"]


def test_verdict_needs_the_full_val2017_run():
    assert report.verdict(_models(), {**FULL, "max_images": 100}, "legacy")["status"] == "no_target"
    small = report.verdict(_models(), {"images": 40, "instances": 60, "max_images": None}, "legacy")
    assert small["status"] == "no_target" and "40 images" in small["text"]


def test_table_shows_every_stat_with_published_and_delta():
    text = report.format_table(_models(q_ap=0.7589), "reproduced")
    lines = text.splitlines()
    assert lines[0].split() == ["stat", "FP32", "published", "delta", "W4A8", "published", "delta"]
    assert [line.split()[0] for line in lines[2:12]] == list(STAT_NAMES)
    ap = lines[2].split()
    assert ap == ["AP", "0.7650", "0.765", "+0.0000", "0.7589", "0.762", "-0.0031"]
    assert lines[3].split() == ["AP50", "0.5000", "-", "-", "0.5000", "-", "-"]
    assert lines[-1] == "verdict: reproduced"


def test_non_tty_progress_has_no_control_characters():
    stream = io.StringIO()
    progress = Progress(100, "evaluation", stream=stream)
    for _ in range(100):
        progress.update(1)
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert len(text.splitlines()) == 10 and "100/100 (100%)" in text.splitlines()[-1]


def test_tty_progress_redraws_in_place_and_quiet_prints_nothing():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    progress = Progress(3, "download", stream=tty)
    for _ in range(3):
        progress.update(1)
    progress.close()
    assert tty.getvalue().startswith("\r[") and "eta" in tty.getvalue()
    quiet = io.StringIO()
    silent = Progress(3, "x", stream=quiet, quiet=True)
    silent.update(3)
    silent.close()
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def synthetic_run(synth_root, tiny_checkpoint, tmp_path_factory):
    results = str(tmp_path_factory.mktemp("runs"))
    args = ["eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint, "--use-cuda", "false",
            "--workers", "0", "--results-dir", results, "--visualize", "2", "--calibration-images", "8", "--no-cache"]
    if not HAVE_AIMET:
        args.append("--fp32-only")
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(results)
    return os.path.join(results, run), out


def test_report_json_schema_and_values(synthetic_run, synth_root, tiny_checkpoint):
    folder, out = synthetic_run
    with open(os.path.join(folder, "report.json")) as f:
        rep = json.load(f)
    assert TOP_LEVEL <= set(rep) and rep["schema_version"] == report.SCHEMA_VERSION
    assert set(rep["models"]) == ({"fp32", "w8a8"} if HAVE_AIMET else {"fp32"})
    for stats in rep["models"].values():
        assert list(stats) == list(STAT_NAMES) and all(0.0 <= v <= 1.0 for v in stats.values())
    with open(os.path.join(folder, "cocoeval_fp32.txt")) as f:
        assert f"{rep['models']['fp32']['AP']:.3f}" in f.read()  # the same AP pycocotools printed
    assert rep["published"]["targets"]["w4a8"] == {"AP": 0.762, "AR": 0.791} and rep["published"]["tolerance"] > 0
    assert rep["verdict"]["status"] == "no_target"
    assert ENVIRONMENT <= set(rep["environment"])
    assert rep["dataset"]["images"] == 12 and len(rep["dataset"]["annotation_sha256"]) == 64
    checkpoint = rep["artifacts"]["fp32_checkpoint"]
    assert checkpoint["path"] == tiny_checkpoint and len(checkpoint["sha256"]) == 64
    assert rep["command"][:2] == ["hrnet-quanteval", "eval"]
    assert {"data", "forward", "decode", "evaluation"} <= set(rep["timings"])
    with open(os.path.join(folder, "report.md")) as f:
        md = f.read()
    assert "**Verdict:** no published target" in md and "| AP |" in md and "## Environment" in md
    table = out.stdout
    assert "AP50" in table and "verdict: no published target" in table
    assert "\r" not in out.stdout + out.stderr and "\x1b" not in out.stdout + out.stderr


def test_report_png_and_overlays_are_images_of_the_expected_size(synthetic_run):
    folder, _ = synthetic_run
    chart = cv2.imread(os.path.join(folder, "report.png"))
    assert chart is not None and (chart.shape[1], chart.shape[0]) == visualize.CHART_SIZE
    with open(os.path.join(folder, "report.json")) as f:
        rep = json.load(f)
    overlays = [p for p in rep["files"] if p.startswith("visualize/")]
    assert len(overlays) == 2
    panels = 1 + len(rep["models"])
    for name in overlays:
        picture = cv2.imread(os.path.join(folder, name))
        image_id = int(os.path.basename(name)[:-4])
        source = cv2.imread(os.path.join(rep["dataset"]["root"], "images", "val2017", "%012d.jpg" % image_id))
        assert (picture.shape[1], picture.shape[0]) == visualize.panel_size(source.shape, panels)
        assert picture.std() > 5  # drawn on, not blank


def test_compare_shows_two_runs_side_by_side(synthetic_run, tmp_path):
    folder, _ = synthetic_run
    with open(os.path.join(folder, "report.json")) as f:
        rep = json.load(f)
    rep["run_id"] = "other"
    rep["models"]["fp32"]["AP"] += 0.01
    rep["environment"]["torch"] = "9.9"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text(json.dumps(rep))
    out = run_cli("compare", folder, str(tmp_path / "other"))
    assert out.returncode == 0, out.stderr
    assert "A FP32" in out.stdout and "B FP32" in out.stdout and "+0.0100" in out.stdout
    assert "torch: A" in out.stdout
    missing = run_cli("compare", folder, str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere does not exist" in missing.stderr
