"""Quantization through the installed AIMET generation: placement, shared ReLU encodings, frozen 1.22-style encodings.

Every test here runs on both generations (aimet-torch 2.x in ``make test``; AIMET 1.22.2's Python with a
stand-in numeric core in ``make test-legacy``) through the adapter's interface, unless it is marked with the
one generation whose mechanism it tests.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch
from conftest import AIMET_GENERATION, AIMET_LABEL, run_cli, tiny_hrnet

from hrnet_quanteval import data
from hrnet_quanteval.engines.native import NativeEngine
from hrnet_quanteval.errors import InputError
from hrnet_quanteval.inference import Normalizer
from hrnet_quanteval.model import pose_hrnet_w32, split_relu_sites
from hrnet_quanteval.quantization.base import INPUT_SHAPE
from hrnet_quanteval.quantization.encodings import match_encodings, model_param_channels, read_encodings
from hrnet_quanteval.quantization.simulate import QuantPlan, load_adapter, quantize
from hrnet_quanteval.runtypes import RunOptions
from hrnet_quanteval.validation import open_dataset


@pytest.fixture(scope="module")
def adapter():
    return load_adapter()




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


def _write(path, content):
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


@pytest.mark.aimet
def test_the_adapter_matches_the_installed_generation(adapter):
    print(f"adapter under test: {AIMET_LABEL}")
    assert adapter.generation == AIMET_GENERATION
    assert adapter.describe()["package"] == {1: "AimetTorch", 2: "aimet-torch"}[AIMET_GENERATION]


@pytest.mark.aimet
def test_placement_on_w32_is_aimet_1_22s_618_quantizers(adapter):
    """Spec 9.4: 1 input + 133 ReLU (shared per module) + 163 conv + 28 upsample outputs, 293 weights: 618,
    counted before and after calibration (1.22 disables quantizers that get no valid encoding)."""
    sim = _sim(adapter, pose_hrnet_w32())
    before = adapter.summary(sim)
    assert (before["activation"], before["param"], before["enabled"]) == (325, 293, 618)
    adapter.compute_encodings(sim, _calibrate_with(_random_batches(1, 1)))
    after = adapter.summary(sim)
    assert (after["activation"], after["param"], after["enabled"]) == (325, 293, 618)


@pytest.mark.aimet2
def test_aimet2_ties_the_reused_relu_sites_of_w32(adapter):
    summary = adapter.summary(_sim(adapter, pose_hrnet_w32()))
    assert summary["shared_relu_groups"] == 116 and summary["relu_call_sites"] == 244


@pytest.mark.aimet
def test_weights_per_channel_symmetric_bias_unquantized_input_quantized(adapter):
    model = tiny_hrnet()
    sim = _sim(adapter, model)
    settings = adapter.param_settings(sim)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs and {f"{n}.weight" for n in convs} <= set(settings)
    for name, conv in convs.items():
        weight = settings[f"{name}.weight"]
        assert weight["enabled"] and weight["symmetric"] and weight["bitwidth"] == 8, name
        assert weight["channels"] == conv.out_channels, name  # one encoding per output channel
        assert not settings[f"{name}.bias"]["enabled"], name  # folded convs have a bias, never quantized
    adapter.compute_encodings(sim, _calibrate_with(_random_batches(1, 1)))
    ranges = adapter.activation_ranges(sim)
    assert "input" in ranges["conv1"] and "output" in ranges["final_layer"]
    assert "output" not in ranges.get("layer1.0.conv1", {})  # Conv+Relu supergroup: the ReLU quantizes


@pytest.mark.aimet
def test_reused_relus_share_one_encoding_pooled_over_all_sites(adapter):
    """A module called at two sites has one output encoding whose range covers both sites' outputs."""
    model = tiny_hrnet()
    sim = _sim(adapter, model)
    site_max = []

    def record(module, inputs, output):
        site_max.append(float(output.max()))

    block = "stage2.0.branches.0.0"
    names = [n for n in (f"{block}.relu", f"{block}.relu_1") if n in dict(sim.model.named_modules())]
    handles = [sim.model.get_submodule(n).register_forward_hook(record) for n in names]
    batches = _random_batches()
    adapter.compute_encodings(sim, _calibrate_with(batches))
    for h in handles:
        h.remove()
    assert len(site_max) == 2 * len(batches)  # two sites per forward pass, every batch
    ranges = adapter.activation_ranges(sim)
    encodings = {ranges[n]["output"] for n in names}
    assert len(encodings) == 1  # every site quantizes with the same encoding
    (low, high), = encodings
    pooled = max(site_max)
    assert high == pytest.approx(pooled, rel=0.01)
    first_site, second_site = max(site_max[0::2]), max(site_max[1::2])
    assert min(first_site, second_site) < 0.9 * pooled  # the pooled range really is wider than one site's


def test_split_relu_sites_keeps_outputs_and_state_dict():
    model = tiny_hrnet()
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


@pytest.mark.aimet
def test_encodings_round_trip_into_a_fresh_sim(adapter, tmp_path):
    model = tiny_hrnet()
    batches = _random_batches()
    x = torch.randn(1, 3, 256, 192)
    source = _sim(adapter, model, param_bw=4)
    adapter.compute_encodings(source, _calibrate_with(batches))
    path = _write(tmp_path / "weights.encodings", adapter.export_param_encodings(source))
    fresh = _sim(adapter, model, param_bw=8)  # the file's bitwidth (4) wins over the default
    encodings = read_encodings(path)
    match_encodings(encodings, adapter.param_channels(fresh), adapter.enabled_param_keys(fresh))
    adapter.load_param_encodings(fresh, encodings)
    frozen = adapter.export_param_encodings(fresh)
    adapter.compute_encodings(fresh, _calibrate_with(batches))
    assert adapter.export_param_encodings(fresh) == frozen  # calibration left the frozen weights alone
    with torch.no_grad():
        a, b = source.model(x), fresh.model(x)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def _legacy_content(channels, bits_by_key, seed=0):
    """A 1.22-format file written from the spec's description: flat keys, per-channel entries."""
    rng = np.random.default_rng(seed)
    content = {}
    for key, count in channels.items():
        if not key.endswith(".weight"):
            continue
        bits = bits_by_key(key)
        half = 2 ** (bits - 1)
        entries = []
        for _ in range(count):
            scale = float(rng.uniform(0.001, 0.02))
            entries.append({"bitwidth": bits, "dtype": "int", "is_symmetric": "True", "max": scale * (half - 1),
                            "min": -scale * half, "offset": -half, "scale": scale})
        content[key] = entries
    return content


@pytest.mark.aimet
def test_a_122_file_sets_its_scales_offsets_and_mixed_bitwidths(adapter, tmp_path):
    model = tiny_hrnet()
    sim = _sim(adapter, model)
    content = _legacy_content(model_param_channels(model), lambda key: 4 if key.startswith("stage") else 8)
    encodings = read_encodings(_write(tmp_path / "zoo.encodings", content))
    adapter.load_param_encodings(sim, encodings)
    got = adapter.export_param_encodings(sim)
    assert set(got) == set(content)
    for key, entries in content.items():
        for mine, theirs in zip(got[key], entries):
            assert np.float32(mine["scale"]) == np.float32(theirs["scale"]), key
            assert mine["offset"] == theirs["offset"] and mine["bitwidth"] == theirs["bitwidth"], key
    assert {adapter.param_settings(sim)[k]["bitwidth"] for k in content} == {4, 8}


@pytest.mark.aimet
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_both_layouts_freeze_and_the_report_counts_what_the_sim_froze(adapter, tmp_path, layout):
    """The frozen count is read from the sim's quantizers; a nested file (what sim.export writes) freezes too."""
    model = tiny_hrnet()
    content = _legacy_content(model_param_channels(model), lambda key: 4)
    if layout == "nested":
        content = {"activation_encodings": {}, "param_encodings": content}
    plan = QuantPlan(param_bw=8, encodings=_write(tmp_path / "w4.encodings", content), calibration_images=1)
    quantized = quantize(model, plan, _calibrate_with(_random_batches(1, 1)), torch.device("cpu"), adapter)
    weights = [k for k in adapter.param_settings(quantized.sim) if k.endswith(".weight")]
    assert adapter.frozen_param_count(quantized.sim) == quantized.info["frozen_param_encodings"] == len(weights)
    assert len(weights) == len(model_param_channels(model)) // 2
    assert quantized.info["encodings_layout"] == layout
    assert quantized.info["param_bitwidths_in_file"] == [4]


@pytest.mark.aimet
def test_without_a_file_nothing_is_reported_frozen(adapter):
    quantized = quantize(tiny_hrnet(), QuantPlan(calibration_images=1), _calibrate_with(_random_batches(1, 1)),
                         torch.device("cpu"), adapter)
    assert quantized.info["frozen_param_encodings"] == 0
    assert quantized.info["quantizers"]["param"] == len(model_param_channels(tiny_hrnet())) // 2


@pytest.mark.aimet
def test_bias_keys_are_set_like_aimet_122_sets_them_and_quantize_nothing(adapter, tmp_path, capsys):
    model = tiny_hrnet()
    channels = model_param_channels(model)
    content = _legacy_content(channels, lambda key: 8)
    calibrate = _calibrate_with(_random_batches(1, 1))
    plain = quantize(model, QuantPlan(encodings=_write(tmp_path / "w.encodings", content), calibration_images=1),
                     calibrate, torch.device("cpu"), adapter)
    content["final_layer.bias"] = [dict(e) for e in content["final_layer.weight"]]
    with_bias = quantize(model, QuantPlan(encodings=_write(tmp_path / "wb.encodings", content), calibration_images=1),
                         calibrate, torch.device("cpu"), adapter)
    assert "quantize nothing" in capsys.readouterr().out
    assert with_bias.info["encodings_for_disabled_quantizers"] == 1
    assert with_bias.info["frozen_param_encodings"] == plain.info["frozen_param_encodings"]
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.equal(plain.model(x), with_bias.model(x))


@pytest.mark.aimet2
def test_unsigned_channels_keep_the_122_grid(adapter):
    """A 1.22 'unsigned symmetric' channel (offset 0) quantizes as 1.22's formula says (aimet-torch 2.x mechanism)."""
    from hrnet_quanteval.quantization.aimet_current import legacy_entries, set_legacy_grid

    sim = _sim(adapter, tiny_hrnet())
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


@pytest.mark.aimet
def test_an_encodings_key_the_model_lacks_is_named(adapter, tmp_path):
    model = tiny_hrnet()
    sim = _sim(adapter, model)
    content = _legacy_content(model_param_channels(model), lambda key: 8)
    content["stage9.0.conv.weight"] = content["conv1.weight"]
    with pytest.raises(InputError, match="stage9.0.conv.weight"):
        match_encodings(read_encodings(_write(tmp_path / "a.encodings", content)), adapter.param_channels(sim))
    content = _legacy_content(model_param_channels(model), lambda key: 8)
    content["conv1.weight"] = content["conv1.weight"][:-1]
    with pytest.raises(InputError, match="conv1.weight has"):
        match_encodings(read_encodings(_write(tmp_path / "b.encodings", content)), adapter.param_channels(sim))


ENTRY = {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "max": 1.27, "min": -1.28, "offset": -128, "scale": 0.01}


def test_a_nested_file_is_read_from_param_encodings(tmp_path):
    path = _write(tmp_path / "nested.encodings", {"activation_encodings": {}, "param_encodings": {"conv1.weight": [ENTRY]}})
    encodings = read_encodings(path)
    assert encodings.entries == {"conv1.weight": [ENTRY]} and encodings.layout == "nested"
    assert any("param_encodings" in n for n in encodings.notices)
    with pytest.raises(InputError, match="no parameter encodings"):
        read_encodings(_write(tmp_path / "bad.encodings", [1, 2]))


def test_json_booleans_and_a_missing_dtype_are_read_as_aimet_writes_them(tmp_path):
    entries = [dict(ENTRY, is_symmetric=True), {k: v for k, v in ENTRY.items() if k != "dtype"}]
    encodings = read_encodings(_write(tmp_path / "e.encodings", {"conv1.weight": entries}))
    assert [e["is_symmetric"] for e in encodings.entries["conv1.weight"]] == ["True", "True"]
    assert [e["dtype"] for e in encodings.entries["conv1.weight"]] == ["int", "int"]
    assert len(encodings.notices) == 2


@pytest.mark.parametrize("channel, change, words", [
    (0, {"bitwidth": "8"}, "bitwidth '8'"),
    (1, {"bitwidth": 3}, "bitwidth 3"),
    (1, {"is_symmetric": "yes"}, "is_symmetric 'yes'"),
    (2, {"dtype": "float"}, "dtype 'float'"),
    (2, {"scale": 0}, "scale 0"),
    (0, {"offset": -127.5}, "offset -127.5"),
    (1, {"min": "low"}, "min 'low'"),
    (2, {"max": -2.0}, "above max"),
    (1, {"scale": None}, "scale None"),
])
def test_every_entry_is_checked_and_named(tmp_path, channel, change, words):
    entries = [dict(ENTRY) for _ in range(3)]
    entries[channel].update(change)
    with pytest.raises(InputError, match=r"conv1\.weight\[%d\]" % channel) as raised:
        read_encodings(_write(tmp_path / "x.encodings", {"conv1.weight": entries}))
    assert words in str(raised.value)


def test_an_entry_without_a_field_aimet_reads_is_named(tmp_path):
    entries = [dict(ENTRY), {k: v for k, v in ENTRY.items() if k != "scale"}]
    with pytest.raises(InputError, match=r"conv1\.weight\[1\] lacks scale"):
        read_encodings(_write(tmp_path / "x.encodings", {"conv1.weight": entries}))


@pytest.mark.aimet
def test_calibration_uses_the_first_n_crops_whatever_the_batch_size(adapter, synth_root):
    evalset = open_dataset(synth_root)
    model = tiny_hrnet()
    count = 7
    first = next(iter(data.crop_loader(evalset.instances.head(count), count, 0)))[0]
    expected = Normalizer(torch.device("cpu"))(first)
    encodings = []
    for batch_size in (4, 32):
        seen = []
        calibrate = NativeEngine().calibration(evalset, count, RunOptions(batch_size, 0, True), torch.device("cpu"))

        def recording(m, calibrate=calibrate, seen=seen):
            handle = m.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
            calibrate(m)
            handle.remove()

        quantized = quantize(model, QuantPlan(calibration_images=count), recording, torch.device("cpu"), adapter)
        assert torch.equal(torch.cat(seen), expected)  # exactly the first crops, in loader order
        encodings.append(adapter.activation_ranges(quantized.sim))
    assert encodings[0] == encodings[1] and len(encodings[0]) > 10


@pytest.mark.aimet
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
        assert report["quantization"]["aimet"]["generation"] == AIMET_GENERATION
        assert os.path.isfile(os.path.join(results, run, f"keypoints_{key}_results.json"))


@pytest.mark.aimet
def test_zoo_path_export_then_encodings_gives_identical_outputs(adapter, synth_root, tmp_path):
    """Path (a): a BN-folded quantized checkpoint wrapped as it is, its weight encodings frozen from a file;
    ``--export`` writes AIMET's own files, and its encodings, fed back with ``--encodings``, reproduce the run."""
    model = tiny_hrnet()
    folded = copy.deepcopy(model)
    adapter.fold(folded, INPUT_SHAPE)
    ckpt = str(tmp_path / "folded.pth")
    torch.save(folded.state_dict(), ckpt)
    source = _sim(adapter, model, param_bw=4)
    adapter.compute_encodings(source, _calibrate_with(_random_batches(1)))
    enc = _write(tmp_path / "w4.encodings", adapter.export_param_encodings(source))
    common = ["eval", "--evaluation-dataset", synth_root, "--quantized-checkpoint", ckpt, "--skip-fp32",
              "--default-param-bw", "4", "--use-cuda", "false", "--workers", "0", "--calibration-images", "4"]
    out = run_cli(*common, "--encodings", enc, "--results-dir", str(tmp_path / "r1"), "--export", str(tmp_path / "export"))
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(tmp_path / "r1")
    with open(tmp_path / "r1" / run / "report.json") as f:
        info = json.load(f)["quantization"]
    assert "folded_batch_norms" not in info and info["frozen_param_encodings"] == len(adapter.export_param_encodings(source))
    assert info["param_bitwidths_in_file"] == [4]
    exported = os.listdir(tmp_path / "export")
    assert any(name.endswith(".onnx") for name in exported), exported
    (written,) = [n for n in exported if n.endswith(".encodings") and not n.endswith("_torch.encodings")]
    out = run_cli(*common, "--encodings", str(tmp_path / "export" / written), "--results-dir", str(tmp_path / "r2"))
    assert out.returncode == 0, out.stderr
    (again,) = os.listdir(tmp_path / "r2")
    first = (tmp_path / "r1" / run / "keypoints_w4a8_results.json").read_text()
    assert (tmp_path / "r2" / again / "keypoints_w4a8_results.json").read_text() == first


@pytest.mark.aimet
def test_a_bad_encodings_file_stops_the_run_before_any_compute(synth_root, tiny_checkpoint, tmp_path):
    entries = {"conv1.weight": [dict(ENTRY, bitwidth="8")] * 8}
    out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint, "--use-cuda", "false",
                  "--encodings", _write(tmp_path / "bad.encodings", entries), "--results-dir", str(tmp_path / "r"),
                  "--workers", "0")
    assert out.returncode == 2, out.stderr
    assert "conv1.weight[0]" in out.stderr and "bitwidth '8'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")  # no FP32 pass was started


def test_bitwidth_outside_aimet_range_is_a_usage_error(synth_root, tiny_checkpoint):
    out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint,
                  "--use-cuda", "false", "--default-param-bw", "3")
    assert out.returncode == 2 and "--default-param-bw 3" in out.stderr
