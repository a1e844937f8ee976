"""Loading whole pickled models without their classes, and refusing pickles that run code."""
import copy
import os
import sys
import types

import pytest
import torch

from hrnet_quanteval import checkpoint
from hrnet_quanteval.errors import InputError
from hrnet_quanteval.model import build_hrnet, tiny_spec, to_folded_structure


def _pickle_in_fake_module(tmp_path, module_name, model):
    """Pickle ``model`` with every HRNet class living in ``module_name``, then make that module vanish."""
    module = types.ModuleType(module_name)
    parent = module_name.split(".")[0]
    sys.modules[module_name] = module
    if parent != module_name:
        sys.modules[parent] = types.ModuleType(parent)
    try:
        obj = copy.deepcopy(model)
        renamed = {}
        for m in obj.modules():
            cls = type(m)
            if cls.__module__ != "hrnet_quanteval.model":
                continue
            if cls not in renamed:
                name = "PoseHighResolutionNet" if m is obj else cls.__name__
                renamed[cls] = type(name, (cls,), {"__module__": module_name, "__qualname__": name})
                setattr(module, name, renamed[cls])
            m.__class__ = renamed[cls]
        obj.config_like = {"MODEL": {"NAME": "pose_hrnet"}, "EXTRA": [1, 2]}
        path = str(tmp_path / "whole.pth")
        torch.save(obj, path)
    finally:
        sys.modules.pop(module_name, None)
        sys.modules.pop(parent, None)
    return path


@pytest.mark.parametrize("module_name", ["models.pose_hrnet", "aimet_zoo_torch.hrnet.somewhere_else"])
def test_whole_model_pickle_loads_without_its_classes(tmp_path, module_name):
    torch.manual_seed(0)
    model = build_hrnet(tiny_spec())
    path = _pickle_in_fake_module(tmp_path, module_name, model)
    assert module_name not in sys.modules
    state = checkpoint.load_state_dict(path)
    expected = model.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert module_name not in sys.modules  # nothing was imported


def test_pickle_that_calls_os_system_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = str(tmp_path / "evil.pth")
    torch.save({"weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(InputError, match="refused.*system"):
        checkpoint.load_state_dict(path)
    assert not marker.exists()


def test_pickle_that_calls_a_class_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    path = str(tmp_path / "evil.pth")
    torch.save([Payload()], path)
    with pytest.raises(InputError, match="refused"):
        checkpoint.load_state_dict(path)


def test_state_dict_files_load_through_the_same_function(tmp_path):
    model = build_hrnet(tiny_spec())
    path = str(tmp_path / "sd.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    state = checkpoint.load_state_dict(path)
    assert list(state) == list(model.state_dict())
    legacy = str(tmp_path / "legacy.pth")
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert list(checkpoint.load_state_dict(legacy)) == list(model.state_dict())


@pytest.mark.aimet
def test_bn_folded_whole_model_loads_into_the_folded_structure(tmp_path):
    from hrnet_quanteval.quantization.base import INPUT_SHAPE
    from hrnet_quanteval.quantization.simulate import load_adapter

    torch.manual_seed(0)
    model = build_hrnet(tiny_spec())
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    load_adapter().fold(model, INPUT_SHAPE)  # AIMET's own folding: BN replaced by Identity
    path = _pickle_in_fake_module(tmp_path, "models.pose_hrnet", model)
    loaded = checkpoint.load_hrnet(path)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=0, rtol=0)


def test_folded_structure_gives_every_conv_a_bias():
    model = to_folded_structure(build_hrnet(tiny_spec()))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="junk.pth cannot be read"):
        checkpoint.load_state_dict(str(path))
