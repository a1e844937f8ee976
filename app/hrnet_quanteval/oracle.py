"""A pose network with hand-set weights that finds the joints of the synthetic set (``synth``).

Four convolution stages, each Conv2d + BatchNorm2d (+ ReLU), so AIMET folds and quantizes it like HRNet:

1. ``color_diff`` (1x1): |pixel - colour| per channel of every joint colour, as two ReLU halves.
2. ``color_match`` (1x1): one soft mask per joint, 1 at the joint's colour and 0 beyond ``COLOR_TOLERANCE``.
3. ``glyph`` (11x11, depthwise): template match of the joint's chiral glyph, thresholded by the bias, so a
   left glyph fires the left channel and not its mirror image (the right channel).
4. ``heatmap`` (9x9, stride 4, depthwise): Gaussian blur sampled at 1/4 resolution, 17 heatmaps whose peaks
   sit where the joints are. No ReLU, like HRNet's ``final_layer``.

The weights are chosen so that every 4-bit per-channel weight grid holds them (or their shape) well.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from torch import nn

from .data import NUM_JOINTS
from .inference import MEAN, STD
from .synth import GLYPH_SIZE, GROUP_COLORS, glyph_mask, joint_group, joint_side

COLOR_TOLERANCE = 75.0  # L1 distance (0-255 units, summed over RGB) at which a colour mask reaches 0
GLYPH_KERNEL = GLYPH_SIZE + 2  # the glyph plus a one-pixel ring
MIRROR_PENALTY = 1.75  # weight of the mirror glyph's extra pixels: left and right glyphs stay apart
RING_PENALTY = 1.0  # weight of the ring: a glyph off by a pixel scores less
GLYPH_THRESHOLD = 0.5  # fraction of a perfect template match needed to fire
BLUR_SIGMA = 2.5  # crop pixels
HEATMAP_GAIN = 1.25  # a clean glyph peaks near 0.9, like a confident HRNet joint


def _set_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give conv+BN the effect of ``weight``/``bias``, split so that folding the BN really matters."""
    gamma = torch.linspace(0.5, 2.0, bn.num_features)
    mean = torch.linspace(-0.1, 0.1, bn.num_features)
    var = torch.linspace(0.8, 1.25, bn.num_features)
    std = torch.sqrt(var + bn.eps)
    with torch.no_grad():
        # bn(conv(x)) = (conv(x) - mean) * gamma / std + beta; pick conv = target * std / gamma + mean
        ratio = (std / gamma).view(-1, *([1] * (weight.dim() - 1)))
        conv.weight.copy_(weight * ratio)
        conv.bias.copy_(bias * std / gamma + mean)
        bn.weight.copy_(gamma)
        bn.bias.zero_()
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)


def glyph_template(joint: int) -> np.ndarray:
    """(11, 11) template for one joint, normalised so that its own glyph scores exactly 1."""
    own = np.zeros((GLYPH_KERNEL, GLYPH_KERNEL), dtype=np.float32)
    own[1:-1, 1:-1] = glyph_mask(joint_side(joint))
    kernel = own.copy()
    side = joint_side(joint)
    if side:
        mirror = np.zeros_like(own)
        mirror[1:-1, 1:-1] = glyph_mask(-side)
        kernel -= MIRROR_PENALTY * ((mirror > 0) & (own == 0))
    ring = np.ones_like(own)
    ring[1:-1, 1:-1] = 0
    kernel -= RING_PENALTY * ring
    return kernel / own.sum()


def blur_kernel(size: int = 9, sigma: float = BLUR_SIGMA) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.max()).astype(np.float32)


class OraclePoseNet(nn.Module):
    """Hand-weighted joint detector for synthetic glyph people: (B, 3, 256, 192) to (B, 17, 64, 48)."""

    def __init__(self) -> None:
        super().__init__()
        groups = len(GROUP_COLORS)
        self.color_diff = nn.Conv2d(3, 6 * groups, 1)
        self.bn_diff = nn.BatchNorm2d(6 * groups)
        self.relu_diff = nn.ReLU(inplace=True)
        self.color_match = nn.Conv2d(6 * groups, NUM_JOINTS, 1)
        self.bn_match = nn.BatchNorm2d(NUM_JOINTS)
        self.relu_match = nn.ReLU(inplace=True)
        self.glyph = nn.Conv2d(NUM_JOINTS, NUM_JOINTS, GLYPH_KERNEL, padding=GLYPH_KERNEL // 2, groups=NUM_JOINTS)
        self.bn_glyph = nn.BatchNorm2d(NUM_JOINTS)
        self.relu_glyph = nn.ReLU(inplace=True)
        self.heatmap = nn.Conv2d(NUM_JOINTS, NUM_JOINTS, 9, stride=4, padding=4, groups=NUM_JOINTS)
        self.bn_heatmap = nn.BatchNorm2d(NUM_JOINTS)
        self._set_weights()
        self.eval()

    def _set_weights(self) -> None:
        groups = len(GROUP_COLORS)
        # stage 1: channel (g, k, s) = s * (pixel_k - colour_gk) / 255, with pixel_k / 255 = x_k * std_k + mean_k
        w = torch.zeros(6 * groups, 3, 1, 1)
        b = torch.zeros(6 * groups)
        for g, color in enumerate(GROUP_COLORS):
            for k in range(3):
                for s, sign in enumerate((1.0, -1.0)):
                    row = 6 * g + 2 * k + s
                    w[row, k] = sign * STD[k]
                    b[row] = sign * (MEAN[k] - color[k] / 255.0)
        _set_conv_bn(self.color_diff, self.bn_diff, w, b)
        # stage 2: mask_j = 1 - (sum of the six halves of joint j's colour) / tolerance
        w = torch.zeros(NUM_JOINTS, 6 * groups, 1, 1)
        for j in range(NUM_JOINTS):
            g = joint_group(j)
            w[j, 6 * g: 6 * g + 6] = -255.0 / COLOR_TOLERANCE
        _set_conv_bn(self.color_match, self.bn_match, w, torch.ones(NUM_JOINTS))
        # stage 3: chiral template match minus threshold
        w = torch.from_numpy(np.stack([glyph_template(j) for j in range(NUM_JOINTS)])).unsqueeze(1)
        _set_conv_bn(self.glyph, self.bn_glyph, w, torch.full((NUM_JOINTS,), -GLYPH_THRESHOLD))
        # stage 4: blur and subsample
        blur = torch.from_numpy(blur_kernel()) * HEATMAP_GAIN
        w = blur.expand(NUM_JOINTS, 1, 9, 9).clone()
        _set_conv_bn(self.heatmap, self.bn_heatmap, w, torch.zeros(NUM_JOINTS))

    def stages(self) -> List[nn.Module]:
        return [self.color_diff, self.color_match, self.glyph, self.heatmap]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_diff(self.bn_diff(self.color_diff(x)))
        x = self.relu_match(self.bn_match(self.color_match(x)))
        x = self.relu_glyph(self.bn_glyph(self.glyph(x)))
        return self.bn_heatmap(self.heatmap(x))
