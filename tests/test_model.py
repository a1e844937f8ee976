"""The model's parameter names and shapes against an independent description of upstream pose_hrnet."""
import torch

from hrnet_quanteval.model import W32_SPEC, build_hrnet, pose_hrnet_w32, spec_from_state_dict, tiny_spec


def _conv(sd, name, cin, cout, k, bias=False):
    sd[f"{name}.weight"] = torch.zeros(cout, cin, k, k)
    if bias:
        sd[f"{name}.bias"] = torch.zeros(cout)


def _bn(sd, name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{name}.{p}"] = torch.zeros(c)
    sd[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)


def upstream_w32_state_dict():
    """Keys and shapes of HRNet-W32 256x192 as the spec (section 7.2) describes them, written from scratch."""
    sd = {}
    _conv(sd, "conv1", 3, 64, 3); _bn(sd, "bn1", 64)
    _conv(sd, "conv2", 64, 64, 3); _bn(sd, "bn2", 64)
    for b in range(4):
        cin = 64 if b == 0 else 256
        p = f"layer1.{b}"
        _conv(sd, f"{p}.conv1", cin, 64, 1); _bn(sd, f"{p}.bn1", 64)
        _conv(sd, f"{p}.conv2", 64, 64, 3); _bn(sd, f"{p}.bn2", 64)
        _conv(sd, f"{p}.conv3", 64, 256, 1); _bn(sd, f"{p}.bn3", 256)
        if b == 0:
            _conv(sd, f"{p}.downsample.0", 64, 256, 1); _bn(sd, f"{p}.downsample.1", 256)
    _conv(sd, "transition1.0.0", 256, 32, 3); _bn(sd, "transition1.0.1", 32)
    _conv(sd, "transition1.1.0.0", 256, 64, 3); _bn(sd, "transition1.1.0.1", 64)
    widths = [32, 64, 128, 256]
    for stage, modules, branches in ((2, 1, 2), (3, 4, 3), (4, 3, 4)):
        if stage > 2:
            cin, cout = widths[branches - 2], widths[branches - 1]
            t = f"transition{stage - 1}.{branches - 1}.0"
            _conv(sd, f"{t}.0", cin, cout, 3); _bn(sd, f"{t}.1", cout)
        for m in range(modules):
            p = f"stage{stage}.{m}"
            for b in range(branches):
                for k in range(4):
                    c = widths[b]
                    _conv(sd, f"{p}.branches.{b}.{k}.conv1", c, c, 3); _bn(sd, f"{p}.branches.{b}.{k}.bn1", c)
                    _conv(sd, f"{p}.branches.{b}.{k}.conv2", c, c, 3); _bn(sd, f"{p}.branches.{b}.{k}.bn2", c)
            outputs = 1 if (stage == 4 and m == modules - 1) else branches
            for i in range(outputs):
                for j in range(branches):
                    f = f"{p}.fuse_layers.{i}.{j}"
                    if j > i:
                        _conv(sd, f"{f}.0", widths[j], widths[i], 1); _bn(sd, f"{f}.1", widths[i])
                    elif j < i:
                        for k in range(i - j):
                            last = k == i - j - 1
                            cout = widths[i] if last else widths[j]
                            _conv(sd, f"{f}.{k}.0", widths[j], cout, 3); _bn(sd, f"{f}.{k}.1", cout)
    _conv(sd, "final_layer", 32, 17, 1, bias=True)
    return sd


def test_upstream_state_dict_loads_strictly_into_w32():
    sd = upstream_w32_state_dict()
    trainable = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == 28_536_113 and len(sd) == 1754
    model = pose_hrnet_w32()
    model.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 28_536_113
    assert all(model.state_dict()[k].shape == v.shape for k, v in sd.items())


def test_w32_output_shape_and_module_counts():
    model = pose_hrnet_w32()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 256, 192))
    assert out.shape == (1, 17, 64, 48)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 293 and sum(c.bias is not None for c in convs) == 1
    assert len(bns) == 292 and all(b.eps == 1e-5 and b.momentum == 0.1 for b in bns)
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 133
    assert sum(isinstance(m, torch.nn.Upsample) for m in model.modules()) == 28


def test_relu_reuse_matches_upstream_call_structure():
    """AIMET quantizes per module: 116 ReLU modules are called more than once, 261 calls in all (spec 7.3)."""
    model = pose_hrnet_w32()
    calls = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=n: calls.__setitem__(name, calls.get(name, 0) + 1))
        for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 256, 192))
    for h in hooks:
        h.remove()
    counts = sorted(calls.values())
    assert sum(counts) == 261
    assert sum(c > 1 for c in counts) == 116
    assert (counts.count(2), counts.count(3), counts.count(4)) == (106, 8, 2)
    assert calls["stage4.2.relu"] == 1 and calls["relu"] == 2


def test_spec_is_recovered_from_state_dicts():
    assert spec_from_state_dict(pose_hrnet_w32().state_dict()) == W32_SPEC
    tiny = tiny_spec()
    assert spec_from_state_dict(build_hrnet(tiny).state_dict()) == tiny
