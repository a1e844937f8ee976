import argparse
import json
import os

import pytest
from conftest import run_cli

from hrnet_quanteval.evaluation import STAT_NAMES
from hrnet_quanteval.flags import parse_bool


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), ("yes", True),
                                         ("false", False), ("False", False), ("0", False), ("NO", False), ("auto", None)])
def test_use_cuda_parses_false_as_false(text, value):
    assert parse_bool(text) is value


def test_use_cuda_rejects_other_words():
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def test_eval_end_to_end_on_cpu(synth_root, tiny_checkpoint, tmp_path):
    results = str(tmp_path / "results")
    args = ["eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint,
            "--use-cuda", "false", "--results-dir", results, "--workers", "2", "--batch-size", "8", "--fp32-only"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "no published target" in first.stdout
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    runs = sorted(os.listdir(results))
    assert len(runs) == 2  # the second run got its own folder
    for run in runs:
        folder = os.path.join(results, run)
        with open(os.path.join(folder, "report.json")) as f:
            report = json.load(f)
        stats = report["models"]["fp32"]
        assert list(stats) == list(STAT_NAMES)
        assert all(0.0 <= v <= 1.0 for v in stats.values())
        assert report["verdict"]["status"] == "no_target"
        assert report["dataset"]["instances"] > 0
        assert os.path.isfile(os.path.join(folder, "keypoints_fp32_results.json"))
        assert os.path.isfile(os.path.join(folder, "report.md"))
        with open(os.path.join(folder, "status.json")) as f:
            assert json.load(f)["status"] == "complete"
    with open(os.path.join(results, runs[0], "keypoints_fp32_results.json")) as f:
        first_results = f.read()
    with open(os.path.join(results, runs[1], "keypoints_fp32_results.json")) as f:
        assert f.read() == first_results  # deterministic


def test_eval_rejects_a_bad_use_cuda_value(synth_root, tiny_checkpoint, tmp_path):
    out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint, "--use-cuda", "maybe")
    assert out.returncode == 2 and "--use-cuda" in out.stderr


def test_explicit_run_id_is_never_reused(synth_root, tiny_checkpoint, tmp_path):
    results = str(tmp_path / "r")
    args = ["eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint, "--use-cuda", "false",
            "--results-dir", results, "--workers", "0", "--max-images", "2", "--run-id", "same", "--fp32-only"]
    assert run_cli(*args).returncode == 0
    before = open(os.path.join(results, "same", "report.json")).read()
    again = run_cli(*args)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert open(os.path.join(results, "same", "report.json")).read() == before


def test_synth_command_writes_a_dataset(tmp_path):
    out = run_cli("synth", str(tmp_path / "s"), "--images", "3", "--seed", "2")
    assert out.returncode == 0, out.stderr
    assert os.path.isfile(tmp_path / "s" / "annotations" / "person_keypoints_val2017.json")
    assert len(os.listdir(tmp_path / "s" / "images" / "val2017")) == 3
