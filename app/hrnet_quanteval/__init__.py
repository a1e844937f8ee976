"""Reproduce the AIMET Model Zoo's quantized HRNet-W32 COCO keypoint accuracy."""

__version__ = "0.1.0"
