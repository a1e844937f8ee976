"""The oracle self-test: right answers by construction, and every stage matters."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import HAVE_AIMET, run_cli

from hrnet_quanteval import data, inference, run
from hrnet_quanteval.oracle import OraclePoseNet
from hrnet_quanteval.runtypes import RunOptions
from hrnet_quanteval.synth import FLIP_PAIRS, generate, glyph_mask
from hrnet_quanteval.validation import open_dataset


@pytest.fixture(scope="module")
def oracle_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("oracle_set"))
    generate(root, images=16, seed=4)
    return open_dataset(root)


def _fp32_ap(evalset, tmp_path) -> float:
    outcome = run.execute(evalset, torch.device("cpu"), str(tmp_path), RunOptions(16, 0, True), fp32=OraclePoseNet())
    return outcome.models["fp32"]["AP"]


def test_right_glyph_is_the_mirror_image_of_the_left_one():
    assert np.array_equal(np.fliplr(glyph_mask(1)), glyph_mask(-1))
    assert not np.array_equal(glyph_mask(1), glyph_mask(-1))
    assert np.array_equal(np.fliplr(glyph_mask(0)), glyph_mask(0))


def test_oracle_is_made_of_ordinary_layers():
    model = OraclePoseNet()
    kinds = {type(m) for m in model.modules()} - {OraclePoseNet}
    assert kinds <= {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU}
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 4
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 256, 192)).shape == (2, 17, 64, 48)


def test_oracle_sees_a_mirrored_left_joint_as_the_right_joint(oracle_set):
    inst = oracle_set.instances
    crops = next(iter(data.crop_loader(inst, 4, 0)))[0]
    x = inference.Normalizer(torch.device("cpu"))(crops)
    model = OraclePoseNet()
    with torch.no_grad():
        plain = model(x)
        mirrored = model(x.flip(3))
    for left, right in FLIP_PAIRS:
        # the right channel of the mirrored input peaks where the left channel of the input does, mirrored
        a = plain[:, left].flatten(1).argmax(1)
        b = mirrored[:, right].flip(2).flatten(1).argmax(1)
        rows_a, rows_b = torch.div(a, 48, rounding_mode="floor"), torch.div(b, 48, rounding_mode="floor")
        assert torch.all((rows_a == rows_b) & ((a % 48 - b % 48).abs() <= 1))


def test_oracle_scores_high_on_the_synthetic_set(oracle_set, tmp_path):
    assert _fp32_ap(oracle_set, tmp_path) >= 0.9


def test_skipping_the_flip_pair_swap_breaks_the_selftest(oracle_set, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "flip_back", lambda heatmaps, pairs=None: heatmaps.flip(3))
    assert _fp32_ap(oracle_set, tmp_path) < 0.5


def test_dropping_the_inverse_affine_breaks_the_selftest(oracle_set, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "to_image", lambda decoded, matrices: decoded.copy())
    assert _fp32_ap(oracle_set, tmp_path) < 0.5


def test_selftest_command_passes_with_quantized_rows_where_aimet_is(tmp_path):
    results = str(tmp_path / "results")
    out = run_cli("selftest", "--use-cuda", "false", "--results-dir", results, "--workers", "2")
    assert out.returncode == 0, out.stderr
    assert "self-test passed" in out.stdout
    (run,) = os.listdir(results)
    with open(os.path.join(results, run, "report.json")) as f:
        report = json.load(f)
    models = report["models"]
    assert models["fp32"]["AP"] >= 0.9
    assert report["verdict"]["status"] == "selftest_passed"
    if not HAVE_AIMET:
        assert set(models) == {"fp32"} and "AIMET is not installed" in out.stdout
        return
    assert set(models) == {"fp32", "w8a8", "w4a8"}
    assert abs(models["w8a8"]["AP"] - models["fp32"]["AP"]) <= 0.02
    assert report["quantization"]["w8a8"]["folded_batch_norms"] == 4
    assert abs(models["w4a8"]["AP"] - models["fp32"]["AP"]) <= 0.02
    assert report["quantization"]["w4a8"]["aimet"]["generation"] in (1, 2)


def test_inside_an_image_a_broken_aimet_fails_the_selftest(tmp_path):
    """The images set HRNET_QUANTEVAL_STACK: there AIMET is part of what the self-test checks."""
    broken = tmp_path / "broken"
    (broken / "aimet_torch").mkdir(parents=True)
    (broken / "aimet_torch" / "__init__.py").write_text("raise ImportError('libpymo.so: cannot open shared object file')\n")
    path = os.pathsep.join([str(broken)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    for stack in ("legacy", "current"):
        out = run_cli("selftest", "--use-cuda", "false", "--images", "4", "--workers", "0",
                      "--results-dir", str(tmp_path / stack), env={"PYTHONPATH": path, "HRNET_QUANTEVAL_STACK": stack})
        assert out.returncode == 3, out.stdout + out.stderr
        assert "AIMET" in out.stderr and stack in out.stderr and "libpymo" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("selftest", "--use-cuda", "false", "--images", "4", "--workers", "0", "--results-dir", str(tmp_path / "here"),
                  env={"PYTHONPATH": path, "HRNET_QUANTEVAL_STACK": ""})
    assert out.returncode == 0 and "quantized self-test rows skipped" in out.stdout  # outside the images: optional


def test_a_quantized_row_that_drops_too_far_fails_the_selftest():
    from hrnet_quanteval.selftest import selftest_verdict

    fine = selftest_verdict({"fp32": {"AP": 1.0}, "w8a8": {"AP": 0.985}, "w4a8": {"AP": 0.98}})
    assert fine["status"] == "selftest_passed"  # 0.02 below FP32 is still within
    bad = selftest_verdict({"fp32": {"AP": 1.0}, "w8a8": {"AP": 0.99}, "w4a8": {"AP": 0.97}})
    assert bad["status"] == "selftest_failed" and "W4A8 AP 0.9700" in bad["text"] and "more than the 0.02" in bad["text"]
    assert selftest_verdict({"fp32": {"AP": 0.85}})["status"] == "selftest_failed"
