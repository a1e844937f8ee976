"""The package's HRNet-W32 against upstream's PoseHighResolutionNet, built from HRNet's lib and experiment yaml.

Same random state dict (random weights, non-trivial BatchNorm statistics) in both; on CPU the heatmaps must be
identical to the last bit, which holds the fuse order, the out-of-place adds and every module's wiring.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io

import pytest
import torch

from hrnet_quanteval.engines.reference import isolated_imports
from hrnet_quanteval.model import pose_hrnet_w32

# HRNet's pose_hrnet.py compares with `is '*'`, which Python flags when it compiles the file
pytestmark = pytest.mark.filterwarnings("ignore:\"is\" with a literal:SyntaxWarning")



@pytest.fixture(scope="module")
def upstream_w32(hrnet_lib, w32_yaml):
    """upstream ``get_pose_net(cfg, is_train=False)`` with the w32_256x192 experiment merged into its config."""
    yaml_path = w32_yaml
    with isolated_imports(hrnet_lib), contextlib.redirect_stdout(io.StringIO()):
        config = importlib.import_module("config")
        pose_hrnet = importlib.import_module("models.pose_hrnet")
    cfg = config.cfg.clone()
    config.update_config(cfg, argparse.Namespace(cfg=yaml_path, opts=[], modelDir="", logDir="", dataDir=""))
    assert cfg.MODEL.NAME == "pose_hrnet" and cfg.MODEL.EXTRA.STAGE4.NUM_CHANNELS == [32, 64, 128, 256]
    return pose_hrnet.get_pose_net(cfg, is_train=False).eval()


def _random_state(model: torch.nn.Module, seed: int) -> dict:
    """Random weights in every tensor, BatchNorm statistics far from (0, 1); W32 heatmaps come out of order 10."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = tensor.clone()
            continue
        shape = tensor.shape
        if name.endswith("running_var"):
            value = torch.rand(shape, generator=generator) * 1.5 + 0.25
        elif name.endswith("running_mean") or name.endswith("bias"):
            value = torch.randn(shape, generator=generator) * 0.2
        elif tensor.dim() == 4:  # conv weights: unit variance over the fan-in
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=generator) * (1.0 / fan_in) ** 0.5
        else:  # BatchNorm weight
            value = torch.rand(shape, generator=generator) * 0.5 + 0.25
        state[name] = value.to(tensor.dtype)
    return state


def test_w32_outputs_equal_upstreams_pose_hrnet_on_cpu(upstream_w32):
    ours = pose_hrnet_w32().eval()
    theirs = upstream_w32
    assert list(ours.state_dict()) == list(theirs.state_dict())  # same names, same registration order
    state = _random_state(ours, seed=16)
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    inputs = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(17))
    with torch.no_grad():
        got = ours(inputs.clone())
        want = theirs(inputs.clone())
    assert got.shape == want.shape == (2, 17, 64, 48)
    assert 1e-2 < float(want.std()) < 1e3  # a live network: neither dead nor blown up
    assert torch.equal(got, want), f"max |diff| {float((got - want).abs().max()):.3g}"


@pytest.mark.aimet1
def test_upstreams_own_model_is_wrapped_like_ours_under_aimet_122(upstream_w32):
    """AIMET 1.22.2's QuantizationSimModel (its Python, stand-in numeric core) on upstream's PoseHighResolutionNet
    and on this package's model, the same weights, BNs folded by 1.22.2's own fold: the same 618 quantizers
    on the same modules with the same settings (1.22 shares a reused module's quantizer on its own)."""
    import copy

    from hrnet_quanteval.quantization.base import INPUT_SHAPE
    from hrnet_quanteval.quantization.simulate import load_adapter

    adapter = load_adapter()
    ours = pose_hrnet_w32()
    state = _random_state(ours, seed=7)
    ours.load_state_dict(state)
    theirs = copy.deepcopy(upstream_w32)
    theirs.load_state_dict(state)
    sims = []
    for model in (ours, theirs):
        model = copy.deepcopy(model).eval()
        assert adapter.fold(model, INPUT_SHAPE) == 292
        sims.append(adapter.create_sim(model, torch.randn(INPUT_SHAPE), 4, 8))
    mine, upstream = sims
    assert adapter.summary(mine) == adapter.summary(upstream) == {"activation": 325, "param": 293, "enabled": 618}
    assert adapter.param_settings(mine) == adapter.param_settings(upstream)
    assert adapter.quantized_layers(mine) == adapter.quantized_layers(upstream)
