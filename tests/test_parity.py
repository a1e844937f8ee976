"""The reference engine and parity: comparison logic on recorded inputs always; both engines where HRNet's lib is."""
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

from hrnet_quanteval import inference, parity
from hrnet_quanteval.cli import main
from hrnet_quanteval.engines import reference
from hrnet_quanteval.errors import EnvironmentProblem
from hrnet_quanteval.evaluation import STAT_NAMES
from hrnet_quanteval.model import build_hrnet, pose_hrnet_w32, tiny_spec
from hrnet_quanteval.synth import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stats(value=0.5):
    return {name: value for name in STAT_NAMES}


def test_identical_engines_pass():
    preds = np.random.default_rng(0).uniform(0, 500, (20, 17, 3)).astype(np.float32)
    result = parity.compare(preds, preds.copy(), _stats(), _stats())
    assert result["passed"] and result["max_abs_px"] == 0.0 and result["fraction_within_tolerance"] == 1.0
    assert result["joints"] == 340 and not result["reasons"]


def test_a_stat_beyond_1e4_fails_and_is_named():
    preds = np.zeros((3, 17, 3), np.float32)
    other = _stats()
    other["APm"] += 2e-4
    result = parity.compare(preds, preds, _stats(), other)
    assert not result["passed"] and len(result["reasons"]) == 1 and result["reasons"][0].startswith("APm differs")
    assert parity.parity_verdict({"fp32": result})["status"] == "parity_failed"
    within = _stats()
    within["AR"] += 0.5e-4
    assert parity.compare(preds, preds, _stats(), within)["passed"]


def test_too_few_agreeing_joints_fail():
    preds = np.zeros((100, 17, 3), np.float32)
    moved = preds.copy()
    moved[:2, :, 0] += 0.02  # 2 % of the joints off by 0.02 px
    result = parity.compare(preds, moved, _stats(), _stats())
    assert not result["passed"] and "98.000 % of joints" in result["reasons"][0]
    assert result["max_abs_px"] == pytest.approx(0.02, abs=1e-6)
    slightly = preds.copy()
    slightly[0, 0, 0] += 0.02  # one joint in 1700: 99.94 % agree
    assert parity.compare(preds, slightly, _stats(), _stats())["passed"]


def test_different_instance_sets_are_an_error():
    with pytest.raises(ValueError, match="different instances"):
        parity.compare(np.zeros((2, 17, 3)), np.zeros((3, 17, 3)), _stats(), _stats())


def test_isolated_imports_leave_no_generic_names_behind(tmp_path):
    lib = tmp_path / "lib"
    (lib / "utils").mkdir(parents=True)
    (lib / "utils" / "__init__.py").write_text("ORIGIN = 'hrnet'\n")
    (lib / "utils" / "helpers.py").write_text("from utils import ORIGIN\nVALUE = ORIGIN + '-helper'\n")
    mine = types.ModuleType("utils")
    mine.ORIGIN = "someone else's"
    sys.modules["utils"] = mine
    try:
        with reference.isolated_imports(str(lib)):
            import importlib

            helpers = importlib.import_module("utils.helpers")
        assert helpers.VALUE == "hrnet-helper"
        assert sys.modules["utils"] is mine and "utils.helpers" not in sys.modules
    finally:
        sys.modules.pop("utils", None)


def test_missing_lib_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("HRNET_LIB", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EnvironmentProblem, match="make reference-lib HRNET_SRC="):
        reference.find_lib()
    monkeypatch.setenv("HRNET_LIB", str(tmp_path / "nothing"))
    with pytest.raises(EnvironmentProblem, match="nothing holds no prepared lib"):
        reference.find_lib()


@pytest.fixture(scope="module")
def parity_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("parity_set"))
    generate(root, images=10, seed=8)
    return root


def _run_parity(monkeypatch, capsys, lib, *args):
    monkeypatch.setenv("HRNET_LIB", lib)
    code = main(["parity", "--use-cuda", "false", "--workers", "0", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parity_holds_for_random_hrnet_w32(hrnet_lib, parity_set, tmp_path, monkeypatch, capsys):
    torch.manual_seed(5)
    model = pose_hrnet_w32()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = str(tmp_path / "w32.pth")
    torch.save(model.state_dict(), ckpt)
    code, out, err = _run_parity(monkeypatch, capsys, hrnet_lib, "--evaluation-dataset", parity_set,
                                 "--checkpoint", ckpt, "--max-images", "4", "--results-dir", str(tmp_path / "r"))
    assert code == 0, out + err
    (run,) = os.listdir(tmp_path / "r")
    with open(tmp_path / "r" / run / "report.json") as f:
        report = json.load(f)
    comparison = report["parity"]["fp32"]
    assert comparison["passed"] and comparison["fraction_within_tolerance"] >= 0.999
    assert report["verdict"]["status"] == "parity_passed"
    assert os.path.isfile(tmp_path / "r" / run / "reference" / "keypoints_fp32_results.json")


def test_parity_holds_for_the_oracle(hrnet_lib, parity_set, tmp_path, monkeypatch, capsys):
    code, out, err = _run_parity(monkeypatch, capsys, hrnet_lib, "--evaluation-dataset", parity_set, "--oracle",
                                 "--results-dir", str(tmp_path / "r"))
    assert code == 0, out + err
    assert "parity holds" in out


def test_parity_fails_naming_the_stat_when_a_native_stage_is_perturbed(hrnet_lib, parity_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference, "flip_back", lambda heatmaps, pairs=None: heatmaps.flip(3))  # no pair swap
    code, out, err = _run_parity(monkeypatch, capsys, hrnet_lib, "--evaluation-dataset", parity_set, "--oracle",
                                 "--results-dir", str(tmp_path / "r"))
    assert code == 1
    assert "parity FAILED" in out and "AP differs by" in out


def test_eval_with_the_reference_engine_matches_the_native_results_file(hrnet_lib, parity_set, tmp_path, monkeypatch):
    monkeypatch.setenv("HRNET_LIB", hrnet_lib)
    torch.manual_seed(2)
    ckpt = str(tmp_path / "tiny.pth")
    torch.save(build_hrnet(tiny_spec()).state_dict(), ckpt)
    texts = []
    for engine in ("native", "reference"):
        results = str(tmp_path / engine)
        code = main(["eval", "--evaluation-dataset", parity_set, "--fp32-checkpoint", ckpt, "--fp32-only", "--use-cuda",
                     "false", "--workers", "0", "--quiet", "--engine", engine, "--results-dir", results])
        assert code == 0
        (run,) = os.listdir(results)
        with open(os.path.join(results, run, "keypoints_fp32_results.json")) as f:
            texts.append(f.read())
        with open(os.path.join(results, run, "report.json")) as f:
            assert json.load(f)["settings"]["engine"] == engine
    assert texts[0] == texts[1]
