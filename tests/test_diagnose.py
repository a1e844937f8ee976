"""``diagnose``: per-layer output SQNR, one-layer-at-a-time sensitivity, frozen weight encodings checked against
their weights, and the ranking; on both AIMET generations (aimet-torch 2.x in ``make test``; AIMET 1.22.2's
Python with a stand-in numeric core in ``make test-legacy``), through the adapter's interface only."""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_hrnet

from hrnet_quanteval import diagnose as dg
from hrnet_quanteval.model import build_hrnet, tiny_spec
from hrnet_quanteval.oracle import OraclePoseNet
from hrnet_quanteval.quantization.base import INPUT_SHAPE
from hrnet_quanteval.quantization.simulate import QuantPlan, load_adapter
from hrnet_quanteval.runtypes import RunOptions
from hrnet_quanteval.validation import open_dataset

RANKING_KEYS = {
    "layer", "kind", "depth", "output_sqnr_db", "sensitivity_heatmap_mse", "sensitivity_displacement_px",
    "weight_sqnr_file_db", "weight_sqnr_computed_db", "file_scale_ratio", "flagged", "reasons", "score",
}
BROKEN = "stage4.0.branches.3.0.conv1"  # a 3x3 conv deep in the network, 32 channels of 288 weights


@pytest.fixture(scope="module")
def adapter():
    return load_adapter()




def _encodings_from_weights(model, bitwidth=8):
    """A 1.22-format file computed from the model's own weights, from the spec's formula for AIMET 1.22's TF
    symmetric per-channel scheme: delta = max|w| / floor((2^bw - 1) / 2), offset -2^(bw-1)."""
    content = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        w = module.weight.detach().double().reshape(module.out_channels, -1)
        entries = []
        for channel in w:
            scale = float(channel.abs().max()) / math.floor((2**bitwidth - 1) / 2)
            offset = -(2 ** (bitwidth - 1))
            entries.append({"bitwidth": bitwidth, "dtype": "int", "is_symmetric": "True", "min": scale * offset,
                            "max": scale * (offset + 2**bitwidth - 1), "offset": offset, "scale": scale})
        content[f"{name}.weight"] = entries
    return content


def _diagnose_cli(tmp_path, name, synth_root, fp32, folded, encodings, *extra):
    path = tmp_path / f"{name}.encodings"
    path.write_text(json.dumps(encodings))
    results = tmp_path / name
    out = run_cli("diagnose", "--evaluation-dataset", synth_root, "--fp32-checkpoint", fp32,
                  "--quantized-checkpoint", folded, "--encodings", str(path), "--images", "2",
                  "--calibration-images", "2", "--use-cuda", "false", "--workers", "0", "--results-dir", str(results),
                  *extra)
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(results)
    with open(results / run / "diagnose.json") as f:
        return json.load(f), results / run, out


@pytest.fixture(scope="module")
def checkpoints(adapter, tmp_path_factory):
    """The tiny model's FP32 checkpoint, its BN-folded checkpoint (path a), and encodings from the folded weights."""
    folder = tmp_path_factory.mktemp("diagnose")
    model = tiny_hrnet()
    fp32 = str(folder / "fp32.pth")
    torch.save(model.state_dict(), fp32)
    folded = copy.deepcopy(model)
    adapter.fold(folded, INPUT_SHAPE)
    folded_path = str(folder / "folded.pth")
    torch.save(folded.state_dict(), folded_path)
    return fp32, folded_path, _encodings_from_weights(folded)


@pytest.mark.aimet
def test_a_wrong_file_encoding_is_flagged_and_ranked_first(checkpoints, synth_root, tmp_path):
    fp32, folded, encodings = checkpoints
    broken = copy.deepcopy(encodings)
    for entry in broken[f"{BROKEN}.weight"]:
        entry.update(scale=entry["scale"] * 16, min=entry["min"] * 16, max=entry["max"] * 16)
    record, folder, out = _diagnose_cli(tmp_path, "broken", synth_root, fp32, folded, broken)
    first = record["ranking"][0]
    assert first["layer"] == BROKEN and first["flagged"], record["ranking"][:3]
    assert record["flagged"] == [BROKEN]
    assert first["file_scale_ratio"] == pytest.approx(16, rel=1e-6)
    assert first["weight_sqnr_file_db"] < first["weight_sqnr_computed_db"] - dg.FLAG_DB
    assert "encodings" in first["reasons"][0] and BROKEN in (folder / "diagnose.md").read_text()
    assert BROKEN in out.stdout and "1 flagged" in out.stdout


@pytest.mark.aimet
def test_with_the_encodings_left_correct_no_layer_is_flagged(checkpoints, synth_root, tmp_path):
    fp32, folded, encodings = checkpoints
    record, folder, _ = _diagnose_cli(tmp_path, "correct", synth_root, fp32, folded, encodings, "--run-id", "mine")
    assert record["flagged"] == [] and not any(e["flagged"] for e in record["ranking"])
    checked = record["weight_encodings"]
    assert set(checked) == set(encodings)  # every frozen weight encoding was checked
    for key, entry in checked.items():
        assert entry["scale_ratio_median"] == pytest.approx(1.0, abs=1e-5), key
        # within a fraction of a dB: AIMET 1.22 (and diagnose) widens a range below 0.01 (final_layer's tiny
        # weights), which the spec's plain formula used for the file does not
        assert abs(entry["file_sqnr_db"] - entry["computed_sqnr_db"]) < 1.0, key
    # the files and keys the README documents
    assert sorted(os.listdir(folder)) == ["diagnose.json", "diagnose.md", "diagnose.png", "status.json"]
    with open(folder / "status.json") as f:
        assert json.load(f)["status"] == "complete"
    for key in ("schema_version", "run_id", "command", "images", "calibration_images", "aimet", "ranking", "flagged",
                "timings", "settings", "weight_encodings", "whole_model"):
        assert key in record, key
    assert record["run_id"] == "mine" and record["images"] == 2 and record["calibration_images"] == 2
    assert record["command"][:2] == ["hrnet-quanteval", "diagnose"]
    for entry in record["ranking"]:
        assert RANKING_KEYS <= set(entry), entry
    depths = sorted(e["depth"] for e in record["ranking"])
    assert depths == list(range(len(depths)))  # every layer ran, each at its own place in the forward pass
    scores = [e["score"] for e in record["ranking"]]
    assert scores == sorted(scores)  # nothing flagged: by score
    markdown = (folder / "diagnose.md").read_text()
    assert "| # | layer |" in markdown and markdown.count("\n| ") >= 20 and "## Columns" in markdown
    png = dg.cv2.imread(str(folder / "diagnose.png"))
    assert png is not None and png.shape[:2] == (dg.CHART_SIZE[1], dg.CHART_SIZE[0])


@pytest.mark.aimet
def test_two_runs_on_the_self_tests_model_give_identical_json(adapter, synth_root):
    """The oracle (not an HRNet: no checkpoint) through ``diagnose``'s core: ranking and SQNR values stable."""
    evalset = open_dataset(synth_root)
    options = RunOptions(batch_size=4, workers=0, quiet=True)
    results = []
    for _ in range(2):
        plan = QuantPlan(param_bw=8, output_bw=8, calibration_images=6)
        result = dg.diagnose(OraclePoseNet(), plan, evalset, torch.device("cpu"), options, adapter, images=6)
        assert set(result.pop("timings")) >= {"sim", "calibration", "output_sqnr", "sensitivity"}
        results.append(json.dumps(result, sort_keys=True))
    assert results[0] == results[1]
    ranking = json.loads(results[0])["ranking"]
    assert {e["layer"] for e in ranking} >= {"color_diff", "color_match", "glyph", "heatmap"}
    assert all(e["output_sqnr_db"] is None or e["output_sqnr_db"] > 10 for e in ranking), ranking


@pytest.mark.aimet
def test_only_the_chosen_layers_quantize_and_the_rest_is_the_folded_fp32_model(adapter):
    """The adapter's switch: no layer on gives the FP32 model folded by the same AIMET (layers match by name
    across the fold); one layer on changes the output; restoring gives the calibrated sim back exactly."""
    model = tiny_hrnet()
    reference = copy.deepcopy(model)
    adapter.fold(reference, INPUT_SHAPE)
    adapter.match_sim_layout(reference)
    folded = copy.deepcopy(model)
    adapter.fold(folded, INPUT_SHAPE)
    sim = adapter.create_sim(folded, torch.randn(INPUT_SHAPE), 8, 8)
    x = torch.randn(2, 3, 256, 192)
    adapter.compute_encodings(sim, lambda m: m(x.clone()))
    layers = adapter.quantized_layers(sim)
    expected = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Upsample))}
    assert set(layers) == expected  # a shared ReLU is one layer on both generations
    assert layers["conv1"]["quantizers"] == ["input", "weight"]  # the model input, and conv+ReLU: no output
    assert len(layers["layer1.0.relu"]["modules"]) in (1, 3)  # 1.22: one wrapper; 2.x: its three call sites

    def run():
        with torch.no_grad():
            return sim.model(x.clone()).as_subclass(torch.Tensor).clone()

    calibrated = run()
    with torch.no_grad():
        fp32 = reference(x.clone())
    adapter.enable_only(sim, [])
    assert torch.allclose(run(), fp32, atol=1e-6, rtol=0)
    adapter.enable_only(sim, ["layer1.0.relu"])
    assert not torch.equal(run(), fp32)
    adapter.restore_quantizers(sim)
    assert torch.equal(run(), calibrated)
    with pytest.raises(ValueError, match="not quantized layers"):
        adapter.enable_only(sim, ["layer1.0.bn1"])


def test_images_zero_is_a_usage_error(synth_root, tmp_path):
    out = run_cli("diagnose", "--evaluation-dataset", synth_root, "--images", "0", "--use-cuda", "false",
                  "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "--images" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.aimet
def test_a_quantized_checkpoint_of_another_network_is_refused_before_compute(adapter, synth_root, tmp_path, checkpoints):
    fp32, _, _ = checkpoints
    spec = tiny_spec()
    other = build_hrnet(type(spec)(**{**spec.__dict__, "final_kernel": 3})).eval()  # final_layer 3x3, not 1x1
    adapter.fold(other, INPUT_SHAPE)
    path = str(tmp_path / "other.pth")
    torch.save(other.state_dict(), path)
    encodings = tmp_path / "other.encodings"
    encodings.write_text(json.dumps(_encodings_from_weights(other)))
    out = run_cli("diagnose", "--evaluation-dataset", synth_root, "--fp32-checkpoint", fp32, "--quantized-checkpoint",
                  path, "--encodings", str(encodings), "--use-cuda", "false", "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 2, out.stderr
    assert "final_layer.weight" in out.stderr and "not the network" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")  # refused before any run folder


# -- the arithmetic, by hand ------------------------------------------------------------------------------------

def test_the_computed_grid_is_aimet_122s_tf_scheme():
    w = np.array([[-0.5, 0.25, 0.127], [0.0, 0.3, 0.6], [0.001, 0.002, 0.0]], dtype=np.float32)
    scale, offset = dg.legacy_weight_grid(w, 8)
    assert scale[0] == pytest.approx(0.5 / 127) and offset[0] == -128  # symmetric: max|w| / 127
    assert scale[1] == pytest.approx(0.6 / 255) and offset[1] == 0  # no negative weight: unsigned, max / 255
    assert scale[2] == pytest.approx(0.01 / 255)  # the range spans at least 0.01
    q = dg.quantize_dequantize(w, scale, offset, 8)
    assert q[0, 0] == pytest.approx(-0.5, abs=1e-7) and q[1, 2] == pytest.approx(0.6, abs=1e-7)
    halves = np.array([-2.5, -0.5, 0.5, 1.5, 2.5], dtype=np.float32)
    assert dg.round_half_away(halves).tolist() == [-3.0, -1.0, 1.0, 2.0, 3.0]


def test_the_ranking_puts_flagged_layers_first_then_the_mean_rank():
    def entry(name, moved, mse, sqnr, flagged=False):
        return {"layer": name, "sensitivity_displacement_px": moved, "sensitivity_heatmap_mse": mse,
                "output_sqnr_db": sqnr, "flagged": flagged}

    ranked = dg.rank([entry("a", 1.0, 1e-3, 30.0), entry("b", 2.0, 2e-3, 20.0), entry("c", 0.1, 1e-5, 50.0, True),
                      entry("d", 2.0, 5e-4, math.inf), entry("e", None, None, None)])
    assert [e["layer"] for e in ranked] == ["c", "b", "a", "d", "e"]
    scores = {e["layer"]: e["score"] for e in ranked}
    assert scores["b"] == pytest.approx((1.5 + 1 + 1) / 3)  # b and d share displacement ranks 1 and 2
    assert scores["e"] == 5.0  # missing values rank last
