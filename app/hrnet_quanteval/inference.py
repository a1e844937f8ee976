"""Forward pass with flip test, heatmap decoding and the way back to image coordinates (spec 3.4, 4, 5).

Everything per batch stays on the model's device; only the (B, 17, 3) decoded joints go back to the host.
The arithmetic is the reference's, operation for operation, so results are bit-identical on one device.
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from .data import FLIP_PAIRS
from .progress import StageTimer
from .transforms import apply_affine

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Normalizer:
    """uint8 RGB NCHW to the float32 network input: x / 255, minus the ImageNet mean, over its std.

    On the CPU the result of those operations for each of the 256 values of each channel is computed once and
    looked up (OpenCV's LUT): the same float32 numbers, computed by the same operations, with one pass over
    memory instead of four. On a GPU the operations run in place on the device.
    """

    def __init__(self, device: torch.device) -> None:
        # A tensor divisor, not the Python scalar 255: CUDA turns division by a CPU scalar into a
        # multiplication by its reciprocal, which is not bit-identical to the reference's CPU ToTensor.
        self.divisor = torch.tensor([255.0], dtype=torch.float32, device=device)
        self.mean = torch.tensor(MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.table: Optional[np.ndarray] = None
        if device.type == "cpu":
            values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256).contiguous()
            self.table = self._compute(values).view(3, 1, 256).numpy().copy()

    def _compute(self, batch: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std, the three operations in place on one new tensor
        out = batch.to(torch.float32, copy=True)
        out.div_(self.divisor).sub_(self.mean).div_(self.std)
        return out

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.table is None or batch.device.type != "cpu" or not batch.is_contiguous():
            return self._compute(batch)
        crops = batch.numpy()
        out = np.empty(crops.shape, dtype=np.float32)
        for b in range(crops.shape[0]):
            for c in range(crops.shape[1]):
                cv2.LUT(crops[b, c], self.table[c], dst=out[b, c])
        return torch.from_numpy(out)


def flip_permutation(num_joints: int, pairs: Sequence[Tuple[int, int]] = FLIP_PAIRS) -> list:
    """Channel order that swaps every left/right pair."""
    order = list(range(num_joints))
    for left, right in pairs:
        order[left], order[right] = right, left
    return order


def flip_back(heatmaps: torch.Tensor, pairs: Sequence[Tuple[int, int]] = FLIP_PAIRS) -> torch.Tensor:
    """Heatmaps of a mirrored input mapped back: mirror the width axis, swap left/right channels."""
    order = torch.tensor(flip_permutation(heatmaps.shape[1], pairs), device=heatmaps.device)
    return heatmaps.index_select(1, order).flip(3)


def shift_right(heatmaps: torch.Tensor) -> torch.Tensor:
    """Move every column one pixel right; column 0 keeps its own value (the reference's alignment fix)."""
    return torch.cat([heatmaps[..., :1], heatmaps[..., :-1]], dim=3)


def average_flipped(output: torch.Tensor, back: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """The flip test's average ``(shift_right(back) + output) * 0.5`` (``back`` without the shift when ``shift`` is
    false): each element the same two operations, with the shift read from a view of ``back`` instead of a
    shifted copy. ``back`` may be overwritten."""
    if not shift:
        return back.add_(output).mul_(0.5)
    averaged = torch.empty_like(output)
    torch.add(back[..., :1], output[..., :1], out=averaged[..., :1])  # column 0 keeps its own value
    torch.add(back[..., :-1], output[..., 1:], out=averaged[..., 1:])
    return averaged.mul_(0.5)


def _last(outputs) -> torch.Tensor:
    return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


class _NoTimer:
    def now(self) -> float:
        return 0.0

    def add(self, stage: str, start: float) -> float:
        return 0.0


def flip_test(model: nn.Module, inputs: torch.Tensor, flip: bool = True, shift: bool = True, timer=None) -> torch.Tensor:
    """Heatmaps of ``inputs`` averaged with those of the mirrored inputs, as the reference validates.

    With a ``timer``, the two forward passes count as "forward" and the mirroring and averaging as "flip".
    """
    clock = timer or _NoTimer()
    start = clock.now()
    output = _last(model(inputs))
    start = clock.add("forward", start)
    if not flip:
        return output
    mirrored = inputs.flip(3)
    start = clock.add("flip", start)
    flipped = _last(model(mirrored))
    start = clock.add("forward", start)
    averaged = average_flipped(output, flip_back(flipped), shift)  # addition commutes exactly: either order
    clock.add("flip", start)
    return averaged


def first_max_index(flat: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum along the last axis, like numpy's argmax: ``torch.max``'s indices are
    documented as the first too, and on the CPU it is about three times faster than ``torch.argmax`` here."""
    return torch.max(flat, dim=-1).indices


def max_preds(heatmaps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per joint: (x, y) of the first maximum in row-major order, (0, 0) when the max is <= 0; and the max."""
    batch, joints, _, width = heatmaps.shape
    flat = heatmaps.reshape(batch, joints, -1)
    index = first_max_index(flat)
    maxvals = torch.amax(flat, dim=2, keepdim=True)
    x = torch.remainder(index, width).to(torch.float32)
    y = torch.div(index, width, rounding_mode="floor").to(torch.float32)
    coords = torch.stack([x, y], dim=2)
    return coords * (maxvals > 0.0).to(torch.float32), maxvals


def refine(coords: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """Quarter-pixel step toward the higher neighbour, for peaks at least two pixels inside the map."""
    batch, joints, height, width = heatmaps.shape
    px = torch.floor(coords[..., 0] + 0.5).long()
    py = torch.floor(coords[..., 1] + 0.5).long()
    inside = (px > 1) & (px < width - 1) & (py > 1) & (py < height - 1)
    # neighbours of clamped indices; the clamp only matters where ``inside`` is False
    xi = px.clamp(1, width - 2)
    yi = py.clamp(1, height - 2)
    flat = heatmaps.reshape(batch, joints, -1)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.gather(flat, 2, (y * width + x).unsqueeze(2)).squeeze(2)

    dx = at(yi, xi + 1) - at(yi, xi - 1)
    dy = at(yi + 1, xi) - at(yi - 1, xi)
    step = torch.stack([torch.sign(dx), torch.sign(dy)], dim=2) * 0.25
    return torch.where(inside.unsqueeze(2), coords + step, coords)


def decode(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) f32 on the heatmaps' device: refined heatmap x, y and the max value per joint."""
    coords, maxvals = max_preds(heatmaps)
    return torch.cat([refine(coords, heatmaps), maxvals], dim=2)


def to_image(decoded: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(N, J, 3) f32: heatmap coordinates mapped to image pixels (f64 product, stored f32), maxvals kept."""
    out = np.empty(decoded.shape, dtype=np.float32)
    out[..., :2] = apply_affine(decoded[..., :2], matrices)
    out[..., 2] = decoded[..., 2]
    return out


def predict(
    model: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    num_samples: int,
    matrices: np.ndarray,
    device: torch.device,
    flip: bool = True,
    on_batch: Optional[Callable[[int], None]] = None,
    timer: Optional[StageTimer] = None,
) -> np.ndarray:
    """(N, J, 3) f32 image-space joints and maxvals for every sample, flip test on by default."""
    return predict_many([model], batches, num_samples, matrices, device, flip, on_batch, timer)[0]


def predict_many(
    models: Sequence[nn.Module],
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    num_samples: int,
    matrices: np.ndarray,
    device: torch.device,
    flip: bool = True,
    on_batch: Optional[Callable[[int], None]] = None,
    timer: Optional[StageTimer] = None,
) -> List[np.ndarray]:
    """``predict`` for several models in one pass over the batches: each batch is normalised once and goes
    through every model in turn. A model's outputs depend only on its own inputs, so each model's joints are
    what a pass of its own would give. Put an AIMET sim last: AIMET 1.22 quantizes the model input in place
    (the reference's flip then mirrors the quantized input too, which this keeps).

    Decoded joints stay on the device until the last batch; one transfer per model brings them to the host.
    """
    normalize = Normalizer(device)
    timer = timer or StageTimer(device)
    decoded: List[Optional[torch.Tensor]] = [None] * len(models)
    for model in models:
        model.eval()
    with torch.no_grad():
        start = timer.now()
        for crops, index in batches:
            inputs = normalize(crops.to(device, non_blocking=True))
            rows = index.to(device)
            start = timer.add("data", start)
            for k, model in enumerate(models):
                heatmaps = flip_test(model, inputs, flip=flip, timer=timer)
                start = timer.now()
                joints = decode(heatmaps)
                if decoded[k] is None:
                    decoded[k] = torch.zeros((num_samples,) + tuple(joints.shape[1:]), dtype=torch.float32, device=device)
                decoded[k][rows] = joints  # type: ignore[index]
                start = timer.add("decode", start)
            if on_batch is not None:
                on_batch(len(index))
        if any(d is None for d in decoded):
            raise ValueError("no samples to evaluate")
        preds = [to_image(d.cpu().numpy(), matrices) for d in decoded]  # type: ignore[union-attr]
        timer.add("decode", start)
    return preds
