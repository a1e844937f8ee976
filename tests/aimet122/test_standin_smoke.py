"""AIMET 1.22.2 Python, stand-in numeric core: AIMET 1.22.2's own QuantizationSimModel on the legacy stack.

The modules are AIMET 1.22.2's unchanged Python (shared/third_party/aimet-1.22.2); only libpymo,
AimetTensorQuantizer and package_info are ours (tests/aimet122/standin), following the TF-scheme rules of
the spec (section 9.3). These tests prove the calls and the control flow, not AIMET's C++ arithmetic. Every
test id carries "[AIMET 1.22.2 Python, stand-in numeric core]".

Runs on the legacy interpreter (Python 3.8, torch 1.9) with requirements/legacy-test.txt installed (make
test-legacy); make test leaves it out (marker ``aimet1``). The HRNet-W32 tests share one run of several minutes on a CPU.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import aimet122_overlay as ov  # pytest puts this test's folder on the path
import pytest

HERE = Path(__file__).resolve().parent
REASON = ov.unavailable_reason()
pytestmark = pytest.mark.aimet1  # AIMET 1.22's own code: run by make test-legacy, left out of make test


def _load_smoke():
    spec = importlib.util.spec_from_file_location("aimet122_smoke", str(HERE / "smoke.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=[ov.LABEL])
def smoke(request):
    """AIMET 1.22.2 (sources + stand-ins) importable for this module's tests; the smoke helpers."""
    if REASON is not None:
        pytest.fail(f"{ov.LABEL}: {REASON}")
    with ov.activated():
        module = _load_smoke()
        module.quiet_aimet()
        yield module


@pytest.fixture()
def tiny_sim(smoke):
    import torch
    sim = smoke.make_sim(smoke.TinyConv().eval(), 8, dummy_shape=(1, 2, 1, 1))
    sim.compute_encodings(lambda model, _: model(torch.tensor([0.2, -0.4]).reshape(1, 2, 1, 1)), None)
    return sim


def _entry(bw=4, **override):
    entry = {"bitwidth": bw, "dtype": "int", "is_symmetric": "True", "min": -0.5, "max": 0.5, "offset": -8,
             "scale": 0.5 / 7}
    entry.update(override)
    return entry


def _write(tmp_path, content, name="enc.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


# --------------------------------------------------------------------------------------------- wiring
def test_modules_are_aimet_1_22_2_sources_with_standin_core(smoke):
    import aimet_common.AimetTensorQuantizer as atq
    import aimet_common.libpymo as libpymo
    import aimet_common.package_info as package_info
    import aimet_torch.batch_norm_fold as bnf
    import aimet_torch.quantsim as quantsim

    sources = ov.sources()
    for module in (quantsim, bnf):
        assert str(Path(module.__file__).resolve()).startswith(str(sources))
    for module in (atq, libpymo, package_info):
        assert str(Path(module.__file__).resolve()).startswith(str(ov.STANDIN_DIR))
    assert libpymo.STANDIN == ov.LABEL
    with pytest.raises(NotImplementedError, match="stand-in"):
        libpymo.EqualizationParams()          # a binding the stand-in does not provide fails when used


# --------------------------------------------------------------------------------------------- tiny conv
def test_tiny_conv_encodings_and_outputs_follow_the_formulas(smoke):
    result = smoke.tiny_checks()              # asserts every value against the spec's formulas
    assert result["tie"][0] == 0.1875         # 2.5 steps rounds away from zero to 3 steps


def test_flat_file_sets_and_freezes_and_its_bitwidth_wins(smoke, tiny_sim, tmp_path):
    path = _write(tmp_path, {"conv.weight": [_entry(min=-0.5, max=0.5), _entry(min=-0.25, max=0.25)]})
    tiny_sim.set_and_freeze_param_encodings(path)
    frozen = ov.frozen_param_quantizers(tiny_sim.model)
    assert list(frozen) == ["conv.weight"]
    quantizer = frozen["conv.weight"]
    assert quantizer.bitwidth == 4 and [e.min for e in quantizer.encoding] == [-0.5, -0.25]
    tiny_sim.compute_encodings(lambda model, _: None, None)       # frozen encodings survive recalibration
    assert [e.max for e in tiny_sim.model.conv.param_quantizers["weight"].encoding] == [0.5, 0.25]


def test_nested_file_freezes_nothing_in_1_22_2(smoke, tiny_sim, tmp_path):
    nested = {"version": "0.5.1", "activation_encodings": {},
              "param_encodings": {"conv.weight": [_entry(), _entry()]}}
    tiny_sim.set_and_freeze_param_encodings(_write(tmp_path, nested))
    assert ov.frozen_param_quantizers(tiny_sim.model) == {}       # keys are looked up at the top level only


def test_bias_key_sets_and_freezes_the_disabled_bias_quantizer(smoke, tiny_sim, tmp_path):
    before = ov.count_enabled_quantizers(tiny_sim.model)
    content = {"conv.weight": [_entry(), _entry()], "conv.bias": [_entry(bw=8), _entry(bw=8)]}
    tiny_sim.set_and_freeze_param_encodings(_write(tmp_path, content))
    frozen = ov.frozen_param_quantizers(tiny_sim.model)
    assert sorted(frozen) == ["conv.bias", "conv.weight"]
    assert frozen["conv.bias"].enabled is False and frozen["conv.bias"].bitwidth == 8
    assert ov.count_enabled_quantizers(tiny_sim.model) == before  # frozen, still not used


def test_json_boolean_is_symmetric_raises_type_error(smoke, tiny_sim, tmp_path):
    path = _write(tmp_path, {"conv.weight": [_entry(is_symmetric=True), _entry(is_symmetric=True)]})
    with pytest.raises(TypeError, match="eval"):
        tiny_sim.set_and_freeze_param_encodings(path)


@pytest.mark.parametrize("where", [0, 1])
def test_missing_dtype_in_any_entry_raises_key_error(smoke, tiny_sim, tmp_path, where):
    entries = [_entry(), _entry()]
    del entries[where]["dtype"]
    with pytest.raises(KeyError, match="dtype"):
        tiny_sim.set_and_freeze_param_encodings(_write(tmp_path, {"conv.weight": entries}))


def test_float_bitwidth_raises_type_error_like_pybind11(smoke, tiny_sim, tmp_path):
    path = _write(tmp_path, {"conv.weight": [_entry(bw=4.0), _entry(bw=4.0)]})
    with pytest.raises(TypeError, match="bw"):
        tiny_sim.set_and_freeze_param_encodings(path)


def test_kernel_reads_min_max_bw_not_scale_offset(smoke, tiny_sim, tmp_path):
    import torch
    good = [_entry(min=-0.5, max=0.5), _entry(min=-0.5, max=0.5)]
    odd = [_entry(min=-0.5, max=0.5, scale=123.0, offset=7), _entry(min=-0.5, max=0.5, scale=0.001, offset=0)]
    x = torch.tensor([0.3, -0.2]).reshape(1, 2, 1, 1)
    outputs = []
    for name, entries in (("good", good), ("odd", odd)):
        sim = smoke.make_sim(smoke.TinyConv().eval(), 8, dummy_shape=(1, 2, 1, 1))
        sim.set_and_freeze_param_encodings(_write(tmp_path, {"conv.weight": entries}, name + ".json"))
        sim.compute_encodings(lambda model, _: model(x.clone()), None)
        outputs.append(sim.model(x.clone()))
    assert torch.equal(outputs[0], outputs[1])


# --------------------------------------------------------------------------------------------- HRNet-W32
@pytest.fixture(scope="module")
def hrnet(smoke, tmp_path_factory):
    """One HRNet-W32 run (fold, W8A8 and W4A8 sims, export, set-and-freeze); several minutes on a CPU."""
    return smoke.hrnet_checks(tmp_path_factory.mktemp("aimet122_export"), log=lambda message: None)


def test_hrnet_w32_fold_all_batch_norms(hrnet):
    fold = hrnet["fold"]
    assert (fold["pairs"], fold["identity"], fold["batchnorm_left"]) == (292, 292, 0)
    assert fold["convs"] == fold["convs_with_bias"] == 293
    assert fold["max_abs_diff"] <= 1e-4 * max(1.0, fold["scale"])


@pytest.mark.parametrize("bw", [8, 4])
def test_hrnet_w32_quantizers_325_activation_293_param(hrnet, bw):
    counts = hrnet["W%dA8" % bw]
    assert counts["built"] == counts["calibrated"] == {"activation": 325, "param": 293, "total": 618}
    assert counts["finite"] and counts["output_shape"] == [1, 17, 32, 24]


def test_hrnet_w32_export_writes_pth_onnx_encodings(hrnet):
    export = hrnet["export"]
    assert {"hrnet_w8a8.pth", "hrnet_w8a8.onnx", "hrnet_w8a8.encodings", "hrnet_w8a8_torch.encodings"} <= set(
        export["files"])
    assert export["param_encodings"] == 293 and export["version"] == "0.5.1"


def test_hrnet_w32_set_and_freeze_flat_file(hrnet):
    freeze = hrnet["freeze"]
    assert freeze["frozen"] == freeze["still_frozen_after_calibration"] == 293
    assert freeze["bitwidths"] == [8]                # the file's bitwidth overrides default_param_bw=4
    assert freeze["output_equals_w8a8"]
