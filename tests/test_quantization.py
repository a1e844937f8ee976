"""Quantization with aimet-torch 2.x on CPU: placement, shared ReLU encodings, frozen 1.22-style encodings."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from conftest import run_cli

from hrnet_quanteval import data
from hrnet_quanteval.engines.native import NativeEngine
from hrnet_quanteval.errors import InputError
from hrnet_quanteval.inference import Normalizer
from hrnet_quanteval.model import build_hrnet, pose_hrnet_w32, split_relu_sites, tiny_spec
from hrnet_quanteval.quantization.aimet_current import legacy_entries, set_legacy_grid
from hrnet_quanteval.quantization.base import INPUT_SHAPE
from hrnet_quanteval.quantization.encodings import match_encodings, read_encodings
from hrnet_quanteval.quantization.simulate import QuantPlan, load_adapter, quantize
from hrnet_quanteval.runtypes import RunOptions
from hrnet_quanteval.validation import open_dataset

pytestmark = pytest.mark.aimet


@pytest.fixture(scope="module")
def adapter():
    return load_adapter()


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = build_hrnet(tiny_spec())
    for m in model.modules():  # non-trivial BN statistics, so folding changes the weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _sim(adapter, model, param_bw=8, fold=True):
    model = copy.deepcopy(model).eval()
    if fold:
        adapter.fold(model, INPUT_SHAPE)
    return adapter.create_sim(model, torch.randn(INPUT_SHAPE), param_bw, 8)


def _random_batches(n=3, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 256, 192, generator=g) for _ in range(n)]


def _calibrate_with(batches):
    def run(model):
        with torch.no_grad():
            for x in batches:
                model(x)
    return run


def test_adapter_is_the_aimet_2_one(adapter):
    assert adapter.generation == 2 and adapter.describe()["package"] == "aimet-torch"


def test_placement_matches_aimet_1_22_on_w32(adapter):
    """Spec 9.4: 1 input + 133 ReLU (shared per module) + 163 conv + 28 upsample outputs, 293 weights: 618."""
    sim = _sim(adapter, pose_hrnet_w32())
    summary = adapter.summary(sim)
    assert (summary["activation"], summary["param"], summary["enabled"]) == (325, 293, 618)
    assert summary["shared_relu_groups"] == 116 and summary["relu_call_sites"] == 244


def test_weights_per_channel_bias_unquantized_input_quantized(adapter):
    sim = _sim(adapter, _tiny())
    convs = [(n, m) for n, m in sim.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in _tiny().modules())
    for name, conv in convs:
        weight_q = conv.param_quantizers["weight"]
        assert weight_q is not None and tuple(weight_q.shape) == (conv.out_channels, 1, 1, 1), name
        assert weight_q.symmetric
        assert conv.param_quantizers["bias"] is None, name  # folded convs have a bias, never quantized
    assert sim.model.conv1.input_quantizers[0] is not None
    assert sim.model.final_layer.output_quantizers[0] is not None
    assert sim.model.layer1[0].conv1.output_quantizers[0] is None  # Conv+Relu supergroup


def test_reused_relus_share_one_encoding_pooled_over_all_sites(adapter):
    model = _tiny()
    sim = _sim(adapter, model)
    site_max = {}

    def hook(name):
        def record(module, inputs, output):
            site_max[name] = max(site_max.get(name, 0.0), float(output.max()))
        return record

    names = ["stage2.0.branches.0.0.relu", "stage2.0.branches.0.0.relu_1"]
    handles = [sim.model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    adapter.compute_encodings(sim, _calibrate_with(_random_batches()))
    for h in handles:
        h.remove()
    first, second = (sim.model.get_submodule(n).output_quantizers[0] for n in names)
    assert first is second  # one quantizer object for both call sites
    pooled = max(site_max.values())
    assert float(first.get_max().detach()) == pytest.approx(pooled, rel=0.01)
    assert min(site_max.values()) < 0.9 * pooled  # the pooled range really is wider than one site's


def test_split_relu_sites_keeps_outputs_and_state_dict():
    model = _tiny()
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        before = model(x)
    keys = list(model.state_dict())
    groups = split_relu_sites(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert list(model.state_dict()) == keys
    assert groups["relu"] == ["relu", "relu_1"]
    assert groups["layer1.0.relu"] == ["layer1.0.relu", "layer1.0.relu_1", "layer1.0.relu_2"]


def test_encodings_round_trip_into_a_fresh_sim(adapter, tmp_path):
    model = _tiny()
    batches = _random_batches()
    x = torch.randn(1, 3, 256, 192)
    source = _sim(adapter, model, param_bw=4)
    adapter.compute_encodings(source, _calibrate_with(batches))
    path = str(tmp_path / "weights.encodings")
    with open(path, "w") as f:
        json.dump(adapter.export_param_encodings(source), f, sort_keys=True, indent=4)
    fresh = _sim(adapter, model, param_bw=8)  # the file's bitwidth (4) wins over the default
    encodings = read_encodings(path)
    match_encodings(encodings, adapter.param_channels(fresh), path)
    adapter.load_param_encodings(fresh, encodings, path)
    frozen = {k: v for k, v in adapter.export_param_encodings(fresh).items()}
    adapter.compute_encodings(fresh, _calibrate_with(batches))
    assert adapter.export_param_encodings(fresh) == frozen  # calibration left the frozen weights alone
    with torch.no_grad():
        a, b = source.model(x), fresh.model(x)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def _legacy_file(adapter, sim, bits_by_key):
    """A 1.22-format file written from the spec's description: flat keys, per-channel entries."""
    rng = np.random.default_rng(0)
    content = {}
    for key, channels in adapter.param_channels(sim).items():
        bits = bits_by_key(key)
        half = 2 ** (bits - 1)
        entries = []
        for _ in range(channels):
            scale = float(rng.uniform(0.001, 0.02))
            entries.append({"bitwidth": bits, "dtype": "int", "is_symmetric": "True", "max": scale * (half - 1),
                            "min": -scale * half, "offset": -half, "scale": scale})
        content[key] = entries
    return content


def test_synthetic_122_file_sets_scales_offsets_and_mixed_bitwidths(adapter, tmp_path):
    sim = _sim(adapter, _tiny())
    content = _legacy_file(adapter, sim, lambda key: 4 if key.startswith("stage") else 8)
    path = str(tmp_path / "zoo.encodings")
    with open(path, "w") as f:
        json.dump(content, f)
    adapter.load_param_encodings(sim, read_encodings(path), path)
    quantizers = {f"{n}.weight": m.param_quantizers["weight"] for n, m in sim.model.named_modules()
                  if isinstance(m, torch.nn.Conv2d)}
    for key, entries in content.items():
        q = quantizers[key]
        expected = torch.tensor([e["scale"] for e in entries], dtype=torch.float32)
        assert torch.equal(q.get_scale().flatten(), expected), key
        assert q.bitwidth == entries[0]["bitwidth"]
        assert legacy_entries(q)[0]["offset"] == entries[0]["offset"]
    assert {q.bitwidth for q in quantizers.values()} == {4, 8}


def test_unsigned_channels_keep_the_122_grid(adapter):
    """A 1.22 'unsigned symmetric' channel (offset 0) quantizes as 1.22's formula says."""
    sim = _sim(adapter, _tiny())
    conv = sim.model.final_layer
    q = conv.param_quantizers["weight"]
    channels = conv.out_channels
    entries = [{"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": 0.0, "max": 0.02 * 255, "offset": 0, "scale": 0.02}]
    entries += [{"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": -0.01 * 128, "max": 0.01 * 127,
                 "offset": -128, "scale": 0.01}] * (channels - 1)
    set_legacy_grid(q, entries)
    w = torch.linspace(-2, 2, 1001).repeat(channels, 1).view(channels, -1, 1, 1)[:, : conv.in_channels]
    got = q(w).detach().numpy()
    scale = np.array([e["scale"] for e in entries], dtype=np.float32).reshape(-1, 1, 1, 1)
    offset = np.array([e["offset"] for e in entries], dtype=np.float32).reshape(-1, 1, 1, 1)
    lo, hi = scale * offset, scale * (offset + 255)
    expected = scale * (np.floor(np.clip(w.numpy(), lo, hi) / scale - offset + 0.5) + offset)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert legacy_entries(q)[0]["offset"] == 0 and legacy_entries(q)[1]["offset"] == -128


def test_encodings_key_without_quantizer_is_named(adapter, tmp_path):
    sim = _sim(adapter, _tiny())
    content = _legacy_file(adapter, sim, lambda key: 8)
    content["stage9.0.conv.weight"] = content["conv1.weight"]
    with pytest.raises(InputError, match="stage9.0.conv.weight"):
        match_encodings(content, adapter.param_channels(sim), "zoo.encodings")
    content = _legacy_file(adapter, sim, lambda key: 8)
    content["conv1.weight"] = content["conv1.weight"][:-1]
    with pytest.raises(InputError, match="conv1.weight has"):
        match_encodings(content, adapter.param_channels(sim), "zoo.encodings")


def test_nested_encodings_file_is_read_from_param_encodings(tmp_path):
    path = tmp_path / "nested.encodings"
    entry = {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "max": 1.27, "min": -1.28, "offset": -128, "scale": 0.01}
    path.write_text(json.dumps({"activation_encodings": {}, "param_encodings": {"conv1.weight": [entry]}}))
    assert read_encodings(str(path)) == {"conv1.weight": [entry]}
    (tmp_path / "bad.encodings").write_text("[1, 2]")
    with pytest.raises(InputError, match="no parameter encodings"):
        read_encodings(str(tmp_path / "bad.encodings"))


def test_calibration_uses_the_first_n_crops_whatever_the_batch_size(adapter, synth_root):
    evalset = open_dataset(synth_root)
    model = _tiny()
    count = 7
    first = next(iter(data.crop_loader(evalset.instances.head(count), count, 0)))[0]
    expected = Normalizer(torch.device("cpu"))(first)
    encodings = []
    for batch_size in (4, 32):
        seen = []
        calibrate = NativeEngine().calibration(
            evalset, count, RunOptions(batch_size, 0, True), torch.device("cpu")
        )

        def recording(m, calibrate=calibrate, seen=seen):
            handle = m.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
            calibrate(m)
            handle.remove()

        quantized = quantize(model, QuantPlan(calibration_images=count), recording, torch.device("cpu"), adapter)
        assert torch.equal(torch.cat(seen), expected)  # exactly the first crops, in loader order
        encodings.append({
            n: (float(q.get_min().detach()), float(q.get_max().detach()))
            for n, m in quantized.model.named_modules() if hasattr(m, "output_quantizers")
            for q in m.output_quantizers if q is not None
        })
    assert encodings[0] == encodings[1] and len(encodings[0]) > 10


def test_eval_w8a8_and_w4a8_end_to_end(synth_root, tiny_checkpoint, tmp_path):
    for bits in ("8", "4"):
        results = str(tmp_path / f"r{bits}")
        out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint,
                      "--use-cuda", "false", "--results-dir", results, "--workers", "0",
                      "--default-param-bw", bits, "--calibration-images", "8")
        assert out.returncode == 0, out.stderr
        (run,) = os.listdir(results)
        with open(os.path.join(results, run, "report.json")) as f:
            report = json.load(f)
        key = f"w{bits}a8"
        assert set(report["models"]) == {"fp32", key}
        assert all(0 <= v <= 1 for v in report["models"][key].values())
        assert report["quantization"]["param_bw"] == int(bits)
        assert report["quantization"]["calibration_images"] == 8
        assert os.path.isfile(os.path.join(results, run, f"keypoints_{key}_results.json"))


def test_zoo_path_folded_checkpoint_with_frozen_encodings(adapter, synth_root, tmp_path):
    """Path (a): a BN-folded quantized checkpoint is wrapped as it is and its weight encodings frozen."""
    model = _tiny()
    folded = copy.deepcopy(model)
    adapter.fold(folded, INPUT_SHAPE)
    ckpt = str(tmp_path / "folded.pth")
    torch.save(folded.state_dict(), ckpt)
    source = _sim(adapter, model, param_bw=4)
    adapter.compute_encodings(source, _calibrate_with(_random_batches(1)))
    enc = str(tmp_path / "w4.encodings")
    with open(enc, "w") as f:
        json.dump(adapter.export_param_encodings(source), f)
    results = str(tmp_path / "r")
    out = run_cli("eval", "--evaluation-dataset", synth_root, "--quantized-checkpoint", ckpt, "--encodings", enc,
                  "--skip-fp32", "--default-param-bw", "4", "--use-cuda", "false", "--results-dir", results,
                  "--workers", "0", "--calibration-images", "4", "--export", str(tmp_path / "export"))
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(results)
    with open(os.path.join(results, run, "report.json")) as f:
        report = json.load(f)
    assert set(report["models"]) == {"w4a8"}
    info = report["quantization"]
    assert "folded_batch_norms" not in info and info["frozen_param_encodings"] == len(adapter.param_channels(source))
    assert info["param_bitwidths_in_file"] == [4]
    exported = os.listdir(tmp_path / "export")
    assert any(name.endswith(".onnx") for name in exported) and any(name.endswith(".encodings") for name in exported)


def test_bitwidth_outside_aimet_range_is_a_usage_error(synth_root, tiny_checkpoint):
    out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint,
                  "--use-cuda", "false", "--default-param-bw", "3")
    assert out.returncode == 2 and "--default-param-bw 3" in out.stderr
