"""bench runs and reports; the speed-ups never change a number (caches on and off give identical outputs)."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from conftest import run_cli

from hrnet_quanteval import data
from hrnet_quanteval.engines.native import NativeEngine
from hrnet_quanteval.model import build_hrnet, tiny_spec
from hrnet_quanteval.runtypes import RunOptions
from hrnet_quanteval.validation import open_dataset


def test_bench_writes_ratios_and_stages(tmp_path):
    out = run_cli("bench", "--use-cuda", "false", "--arch", "tiny", "--instances", "12", "--repeat", "2",
                  "--workers", "0", "--batch-size", "8", "--results-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(tmp_path)
    with open(tmp_path / run / "bench.json") as f:
        bench = json.load(f)
    assert bench["repetitions"] == 2 and bench["instances"] >= 12 and bench["floor_ratio"] > 0
    native = bench["engines"]["native"]
    assert {"data", "forward", "flip", "decode", "evaluation"} <= set(native["stages"])
    assert native["fp32_images_per_second"] > 0 and bench["forward_floor_seconds"] > 0
    assert bench["peak_rss_mib"]["main"] > 0
    assert "floor_ratio (native FP32 evaluation / forward floor)" in out.stdout


def _eval(synth_root, ckpt, results, *extra):
    out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", ckpt, "--use-cuda", "false",
                  "--workers", "2", "--batch-size", "8", "--results-dir", str(results), *extra)
    assert out.returncode == 0, out.stderr
    runs = sorted(os.listdir(results), key=lambda r: os.path.getmtime(os.path.join(results, r)))
    folder = os.path.join(results, runs[-1])
    with open(os.path.join(folder, "report.json")) as f:
        report = json.load(f)
    files = {name: open(os.path.join(folder, f"keypoints_{name}_results.json")).read() for name in report["models"]}
    return report, files, out


@pytest.mark.aimet
def test_crop_cache_and_fp32_results_cache_change_no_output(synth_root, tiny_checkpoint, tmp_path):
    cache = str(tmp_path / "cache")
    common = ["--calibration-images", "10", "--artifacts-dir", cache]
    plain, plain_files, _ = _eval(synth_root, tiny_checkpoint, tmp_path / "a", "--crop-cache-mb", "0", "--no-cache", *common)
    cached, cached_files, _ = _eval(synth_root, tiny_checkpoint, tmp_path / "b", *common)
    assert cached_files == plain_files and cached["models"] == plain["models"]
    assert cached["settings"]["fp32_results"].startswith("computed and cached")
    again, again_files, out = _eval(synth_root, tiny_checkpoint, tmp_path / "c", *common)
    assert "results reused from the cache" in out.stdout and again["settings"]["fp32_results"].startswith("reused")
    assert again_files == plain_files and again["models"] == plain["models"]
    other, _, out = _eval(synth_root, tiny_checkpoint, tmp_path / "d", "--default-param-bw", "4", *common)
    assert "results reused from the cache" in out.stdout and other["models"]["fp32"] == plain["models"]["fp32"]


def test_fp32_results_cache_is_keyed_by_the_checkpoint(synth_root, tiny_checkpoint, tmp_path):
    cache = str(tmp_path / "cache")
    _eval(synth_root, tiny_checkpoint, tmp_path / "a", "--fp32-only", "--artifacts-dir", cache)
    torch.manual_seed(99)
    other = str(tmp_path / "other.pth")
    torch.save(build_hrnet(tiny_spec()).state_dict(), other)
    report, _, out = _eval(synth_root, other, tmp_path / "b", "--fp32-only", "--artifacts-dir", cache)
    assert "reused" not in out.stdout and report["settings"]["fp32_results"].startswith("computed")


def test_decoding_each_image_once_gives_the_same_crops(synth_root):
    evalset = open_dataset(synth_root)
    inst = evalset.instances
    shared = data.CropDataset(inst.paths, inst.centers, inst.scales)
    for k in range(len(inst)):
        fresh = data.CropDataset(inst.paths, inst.centers, inst.scales)  # no earlier image to reuse
        assert torch.equal(shared[k][0], fresh[k][0])


def test_crop_cache_serves_exactly_what_the_loader_produced(synth_root):
    evalset = open_dataset(synth_root)
    engine = NativeEngine()
    options = RunOptions(5, 0, True)
    first = torch.cat([c for c, _ in engine._crops(evalset, len(evalset.instances), options, torch.device("cpu"))])
    second = torch.cat([c for c, _ in engine._crops(evalset, len(evalset.instances), options, torch.device("cpu"))])
    assert torch.equal(first, second) and engine._caches[evalset.annotation_file].holds(len(evalset.instances))
    small = NativeEngine(crop_cache_mb=0)
    third = torch.cat([c for c, _ in small._crops(evalset, len(evalset.instances), options, torch.device("cpu"))])
    assert torch.equal(first, third) and not small._caches[evalset.annotation_file].holds(1)


@pytest.mark.aimet2
def test_quantizing_weights_once_changes_no_output():
    from hrnet_quanteval.quantization.simulate import QuantPlan, load_adapter, quantize

    torch.manual_seed(0)
    model = build_hrnet(tiny_spec())
    batches = [torch.randn(4, 3, 256, 192) for _ in range(2)]

    def calibrate(m):
        with torch.no_grad():
            for x in batches:
                m(x)

    x = torch.randn(2, 3, 256, 192)
    outputs = []
    for accelerate in (False, True):
        q = quantize(copy.deepcopy(model), QuantPlan(), calibrate, torch.device("cpu"), load_adapter(), accelerate=accelerate)
        with torch.no_grad():
            outputs.append(q.model(x).as_subclass(torch.Tensor))
        assert q.info.get("weights_quantized_once", False) is accelerate
    assert torch.equal(outputs[0], outputs[1])
    assert np.isfinite(outputs[0].numpy()).all()
