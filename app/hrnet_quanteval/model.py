"""HRNet pose network with the module layout of upstream ``pose_hrnet``.

The module tree, parameter names and shapes match HRNet-Human-Pose-Estimation's ``pose_hrnet`` (commit
00d7bf72), so official and zoo state dicts load with ``strict=True``. The call structure matches too:
every block calls its single ``relu`` module at several places, which is what AIMET sees when it wraps
the network (spec section 7.3).

``HRNetSpec`` describes any width/depth variant; ``pose_hrnet_w32()`` is the 256x192 COCO model and
``tiny_spec()`` a cheap variant for tests and benchmarks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "StageSpec",
    "HRNetSpec",
    "PoseHRNet",
    "W32_SPEC",
    "build_hrnet",
    "pose_hrnet_w32",
    "tiny_spec",
    "spec_from_state_dict",
    "split_relu_sites",
    "to_folded_structure",
    "is_folded_state",
]


@dataclass(frozen=True)
class StageSpec:
    """One HRNet stage: ``modules`` high-resolution modules with one branch per channel entry."""

    modules: int
    blocks: Tuple[int, ...]
    channels: Tuple[int, ...]

    @property
    def branches(self) -> int:
        return len(self.channels)


@dataclass(frozen=True)
class HRNetSpec:
    """Width and depth of an HRNet pose network (the ``MODEL.EXTRA`` block of the upstream yaml)."""

    stem_channels: int = 64
    layer1_planes: int = 64
    layer1_blocks: int = 4
    stages: Tuple[StageSpec, ...] = (
        StageSpec(1, (4, 4), (32, 64)),
        StageSpec(4, (4, 4, 4), (32, 64, 128)),
        StageSpec(3, (4, 4, 4, 4), (32, 64, 128, 256)),
    )
    num_joints: int = 17
    final_kernel: int = 1

    def __post_init__(self) -> None:
        if len(self.stages) != 3:
            raise ValueError(f"HRNet pose networks have 3 multi-branch stages, got {len(self.stages)}")
        previous: Tuple[int, ...] = ()
        for number, stage in enumerate(self.stages, start=2):
            if len(stage.blocks) != stage.branches:
                raise ValueError(f"stage{number}: {len(stage.blocks)} block counts for {stage.branches} branches")
            if stage.channels[: len(previous)] != previous and number > 2:
                raise ValueError(f"stage{number}: channels {stage.channels} must extend {previous}")
            if stage.branches <= len(previous):
                raise ValueError(f"stage{number}: must add at least one branch")
            previous = stage.channels
        if self.final_kernel not in (1, 3):
            raise ValueError(f"final_kernel must be 1 or 3, got {self.final_kernel}")


W32_SPEC = HRNetSpec()

BOTTLENECK_EXPANSION = 4


def tiny_spec(num_joints: int = 17) -> HRNetSpec:
    """A very narrow, shallow HRNet with W32's topology (four branches, fuse layers, reused ReLUs).

    Its forward pass costs a few percent of W32's, so on a CPU the pipeline around the model weighs as much
    as it does around W32 on a GPU (tests and ``bench --arch tiny``).
    """
    return HRNetSpec(
        stem_channels=8,
        layer1_planes=4,
        layer1_blocks=1,
        stages=(
            StageSpec(1, (1, 1), (4, 8)),
            StageSpec(1, (1, 1, 1), (4, 8, 16)),
            StageSpec(2, (1, 1, 1, 1), (4, 8, 16, 32)),
        ),
        num_joints=num_joints,
    )


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class ReluSites:
    """A module that calls its one ``relu`` at several places, as upstream does.

    Call site k uses ``relu`` itself, or ``relu_<k>`` once ``split_relu_sites`` has given the site a ReLU of
    its own. AIMET 1.22 wraps the shared module once, so every site shares one quantizer; aimet-torch 2.x
    needs one module per site (see ``aimet_current``).
    """

    relu: nn.Module

    def relu_sites(self) -> int:
        """How many times one forward calls ``relu``."""
        raise NotImplementedError

    def site(self, k: int) -> nn.Module:
        return self.relu if k == 0 else getattr(self, f"relu_{k}", self.relu)


class BasicBlock(ReluSites, nn.Module):
    """Two 3x3 convolutions with a residual; ``relu`` is called twice."""

    def __init__(self, cin: int, planes: int, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def relu_sites(self) -> int:
        return 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.site(0)(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual  # in place, as upstream: the traced graph has the same add op
        return self.site(1)(out)


class Bottleneck(ReluSites, nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) with a residual; ``relu`` is called three times."""

    def __init__(self, cin: int, planes: int, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * BOTTLENECK_EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * BOTTLENECK_EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def relu_sites(self) -> int:
        return 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.site(0)(self.bn1(self.conv1(x)))
        out = self.site(1)(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += residual
        return self.site(2)(out)


def _residual_stack(block: type, cin: int, planes: int, count: int, expansion: int) -> nn.Sequential:
    cout = planes * expansion
    downsample = nn.Sequential(*_conv_bn(cin, cout, 1, 1)) if cin != cout else None
    layers = [block(cin, planes, downsample)]
    layers += [block(cout, planes) for _ in range(count - 1)]
    return nn.Sequential(*layers)


def _fuse_layer(channels: Sequence[int], i: int, j: int) -> Optional[nn.Module]:
    """The module that brings branch j to branch i's resolution and width (None when i == j)."""
    if j == i:
        return None
    if j > i:
        return nn.Sequential(*_conv_bn(channels[j], channels[i], 1, 1), nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
    steps = []
    for k in range(i - j):
        last = k == i - j - 1
        layers = _conv_bn(channels[j], channels[i] if last else channels[j], 3, 2)
        if not last:
            layers.append(nn.ReLU(inplace=True))
        steps.append(nn.Sequential(*layers))
    return nn.Sequential(*steps)


class HighResolutionModule(ReluSites, nn.Module):
    """Parallel branches of basic blocks followed by all-to-all fusion; ``relu`` is called once per output.

    Output i is the sum of every branch brought to branch i's resolution and width, added left to right
    with out-of-place adds (branch 0 first), then passed through call site i of ``relu``. Each term is
    computed just before it is added, so the op order is upstream's. ``multi_scale_output=False`` keeps only
    output 0 (the last module of the network). The input list is not modified.
    """

    def __init__(self, blocks: Sequence[int], channels: Sequence[int], multi_scale_output: bool) -> None:
        super().__init__()
        # registration order (branches, fuse_layers, relu) decides the state-dict key order: keep it
        self.branches = nn.ModuleList(
            _residual_stack(BasicBlock, c, c, n, 1) for n, c in zip(blocks, channels)
        )
        outputs = len(channels) if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_layer(channels, i, j) for j in range(len(channels))) for i in range(outputs)
        )
        self.relu = nn.ReLU(inplace=True)

    def relu_sites(self) -> int:
        return len(self.fuse_layers)

    @staticmethod
    def _fused_sum(adapters: nn.ModuleList, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of ``features``, each through its adapter (None: taken as it is), as ((t0 + t1) + t2) + ..."""
        terms = (feature if adapter is None else adapter(feature) for adapter, feature in zip(adapters, features))
        total = next(terms)
        for term in terms:  # each term is computed only when its add comes
            total = total + term
        return total

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        features = [branch(x) for branch, x in zip(self.branches, xs)]
        return [self.site(i)(self._fused_sum(row, features)) for i, row in enumerate(self.fuse_layers)]


def _transition(previous: Sequence[int], current: Sequence[int]) -> nn.ModuleList:
    """Branch adapters between stages: None where a branch carries over, a strided conv for a new branch."""
    layers: List[Optional[nn.Module]] = []
    for i, cout in enumerate(current):
        if i < len(previous):
            same = previous[i] == cout
            layers.append(None if same else nn.Sequential(*_conv_bn(previous[i], cout, 3, 1), nn.ReLU(inplace=True)))
        else:
            steps = []
            for k in range(i + 1 - len(previous)):
                width = cout if k == i - len(previous) else previous[-1]
                steps.append(nn.Sequential(*_conv_bn(previous[-1], width, 3, 2), nn.ReLU(inplace=True)))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class PoseHRNet(ReluSites, nn.Module):
    """HRNet pose network: (B, 3, H, W) image batch to (B, joints, H/4, W/4) heatmaps."""

    def __init__(self, spec: HRNetSpec = W32_SPEC) -> None:
        super().__init__()
        self.spec = spec
        stem = spec.stem_channels
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _residual_stack(Bottleneck, stem, spec.layer1_planes, spec.layer1_blocks, BOTTLENECK_EXPANSION)
        previous: Tuple[int, ...] = (spec.layer1_planes * BOTTLENECK_EXPANSION,)
        for number, stage in enumerate(spec.stages, start=1):
            setattr(self, f"transition{number}", _transition(previous, stage.channels))
            last_stage = number == len(spec.stages)
            hrms = [
                HighResolutionModule(stage.blocks, stage.channels, not (last_stage and m == stage.modules - 1))
                for m in range(stage.modules)
            ]
            setattr(self, f"stage{number + 1}", nn.Sequential(*hrms))
            previous = stage.channels
        self.final_layer = nn.Conv2d(
            previous[0], spec.num_joints, spec.final_kernel, 1, 1 if spec.final_kernel == 3 else 0
        )

    def relu_sites(self) -> int:
        return 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.site(0)(self.bn1(self.conv1(x)))
        x = self.site(1)(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        branches = [t(x) for t in self.transition1]
        branches = self.stage2(branches)
        for number in (2, 3):
            transition = getattr(self, f"transition{number}")
            # a new branch grows out of the lowest-resolution output of the previous stage
            branches = [branches[i] if t is None else t(branches[-1]) for i, t in enumerate(transition)]
            branches = getattr(self, f"stage{number + 1}")(branches)
        return self.final_layer(branches[0])


def split_relu_sites(model: nn.Module) -> Dict[str, List[str]]:
    """Give every further call site of a shared ``relu`` its own ReLU module; returns the groups.

    Each group maps the shared module's name to the names of all its sites (the shared one first).
    Parameter-free, so state dicts are unchanged.
    """
    groups: Dict[str, List[str]] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, ReluSites):
            continue
        prefix = f"{name}." if name else ""
        sites = [f"{prefix}relu"]
        for k in range(1, module.relu_sites()):
            if not hasattr(module, f"relu_{k}"):
                setattr(module, f"relu_{k}", nn.ReLU(inplace=True))
            sites.append(f"{prefix}relu_{k}")
        if len(sites) > 1:
            groups[sites[0]] = sites
    return groups


def to_folded_structure(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by Identity and give every conv a (zero) bias, as AIMET's BN folding leaves it.

    A state dict saved after folding then loads strictly. Changes ``model`` in place and returns it.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, nn.Conv2d) and child.bias is None:
                child.bias = nn.Parameter(torch.zeros(child.out_channels))
    return model


def is_folded_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the state dict of a BN-folded HRNet: no BN entries, and the stem conv has a bias."""
    return "conv1.bias" in state and not any(k.endswith("running_mean") for k in state)


def build_hrnet(spec: HRNetSpec = W32_SPEC) -> PoseHRNet:
    """An HRNet of the given shape in eval mode, with PyTorch's default initialisation."""
    return PoseHRNet(spec).eval()


def pose_hrnet_w32() -> PoseHRNet:
    """HRNet-W32 for 256x192 COCO keypoints (28,536,113 parameters)."""
    return build_hrnet(W32_SPEC)


def _count(keys: Sequence[str], pattern: str) -> int:
    found = {int(m.group(1)) for m in (re.match(pattern, k) for k in keys) if m}
    return max(found) + 1 if found else 0


def spec_from_state_dict(state: Mapping[str, torch.Tensor]) -> HRNetSpec:
    """Recover the HRNet shape that produced ``state`` from its keys and tensor shapes."""
    keys = list(state)
    try:
        stem = state["conv1.weight"].shape[0]
        planes = state["layer1.0.conv1.weight"].shape[0]
        final = state["final_layer.weight"]
    except KeyError as missing:
        raise ValueError(f"not an HRNet pose state dict: no {missing} entry") from None
    stages = []
    for number in (2, 3, 4):
        prefix = re.escape(f"stage{number}.")
        modules = _count(keys, prefix + r"(\d+)\.")
        branches = _count(keys, prefix + r"0\.branches\.(\d+)\.")
        if modules == 0 or branches == 0:
            raise ValueError(f"not an HRNet pose state dict: no stage{number} branches")
        blocks = tuple(_count(keys, prefix + rf"0\.branches\.{b}\.(\d+)\.") for b in range(branches))
        channels = tuple(int(state[f"stage{number}.0.branches.{b}.0.conv1.weight"].shape[0]) for b in range(branches))
        stages.append(StageSpec(modules, blocks, channels))
    return HRNetSpec(
        stem_channels=int(stem),
        layer1_planes=int(planes),
        layer1_blocks=_count(keys, r"layer1\.(\d+)\."),
        stages=tuple(stages),
        num_joints=int(final.shape[0]),
        final_kernel=int(final.shape[2]),
    )
