"""Can this host run the request on a GPU? Checked before any compute, explained when not.

``python -m hrnet_quanteval.preflight --use-cuda VALUE`` is what the container's entry point runs; the CLI
uses ``check`` through ``run.resolve_device``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

from .errors import EXIT_ENVIRONMENT, EnvironmentProblem
from .flags import parse_bool

NO_GPU_FIX = (
    "check that the NVIDIA driver works on the host (nvidia-smi); in Docker, install the NVIDIA container "
    "toolkit and give the container a GPU (the compose services reserve one; with docker run pass --gpus all); "
    "or pass --use-cuda false to run on the CPU (hours for the full set)"
)


def _arch_ok(capability: Tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether torch's compiled kernels cover a GPU: same-major SASS at or below it, or PTX at or below it."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        a_major, a_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True  # PTX is JIT-compiled for newer GPUs
    return False


def unsupported_gpus() -> List[str]:
    """Descriptions of visible GPUs that the installed torch has no kernels for."""
    import torch

    arch_list = torch.cuda.get_arch_list()
    problems = []
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        if arch_list and not _arch_ok(capability, arch_list):
            name = torch.cuda.get_device_name(index)
            problems.append(f"{name} (sm_{capability[0]}{capability[1]}; this torch {torch.__version__} has {' '.join(arch_list)})")
    return problems


def stack_hint() -> str:
    if os.environ.get("HRNET_QUANTEVAL_STACK") == "legacy":
        return "this is the legacy image (torch 1.9.1+cu111, GPUs up to Ampere): use the eval-current service for Hopper and newer"
    return "install a torch build with kernels for this GPU (the current image has them for Hopper and newer)"


def check(use_cuda: Optional[bool], require_gpu: bool = False) -> bool:
    """True to use CUDA, False for the CPU; raises EnvironmentProblem when the request cannot be met.

    ``use_cuda`` None (auto) takes a GPU when there is one; with ``require_gpu`` (the container's default for
    ``eval``, where a CPU run takes hours) a missing GPU is an error too, and the message says that no
    ``--use-cuda`` was given rather than a value nobody typed.
    """
    if use_cuda is False:
        return False
    import torch

    if not torch.cuda.is_available():
        if use_cuda:
            raise EnvironmentProblem("--use-cuda true was given but PyTorch sees no CUDA GPU", NO_GPU_FIX)
        if require_gpu:
            raise EnvironmentProblem(
                "no --use-cuda was given and eval runs on a GPU by default in the images, but PyTorch sees no CUDA GPU",
                NO_GPU_FIX,
            )
        return False
    problems = unsupported_gpus()
    if problems:
        raise EnvironmentProblem(
            f"the GPU cannot run this PyTorch build: {'; '.join(problems)}",
            f"{stack_hint()}, or pass --use-cuda false",
        )
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hrnet_quanteval.preflight")
    parser.add_argument("--use-cuda", type=parse_bool, default=None)
    parser.add_argument("--require-gpu", action="store_true", help="with --use-cuda auto: no GPU is an error")
    args = parser.parse_args(argv)
    try:
        device = "cuda" if check(args.use_cuda, args.require_gpu) else "cpu"
    except EnvironmentProblem as problem:
        print(f"preflight: {problem}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    print(f"preflight: device {device}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
