"""What ran the evaluation: interpreter, libraries, device, image stack and source revisions."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Dict, Optional

import torch

from . import __version__

# Set by the Dockerfile; a local run reports them as absent.
STACK_ENV = "HRNET_QUANTEVAL_STACK"
HRNET_COMMIT_ENV = "HRNET_COMMIT"
GIT_COMMIT_ENV = "HRNET_QUANTEVAL_GIT_COMMIT"
HRNET_LIB_ENV = "HRNET_LIB"


def package_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """The app's source revision: from the image's environment, else from a git checkout around it."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def hrnet_lib_facts() -> Dict[str, object]:
    """Commit and applied patches of the prepared HRNet lib (files written by scripts/prepare-hrnet-lib.sh)."""
    lib = os.environ.get(HRNET_LIB_ENV)
    facts: Dict[str, object] = {"hrnet_lib": lib, "hrnet_commit": os.environ.get(HRNET_COMMIT_ENV), "patches_applied": []}
    if lib:
        for key, name in (("hrnet_commit", "HRNET_COMMIT"), ("patches_applied", "PATCHES")):
            try:
                with open(os.path.join(lib, name)) as f:
                    words = f.read().split()
            except OSError:
                continue
            facts[key] = words if key == "patches_applied" else (words[0] if words else None)
    return facts


def stack() -> str:
    """``legacy`` or ``current`` inside the images, ``local`` elsewhere."""
    return os.environ.get(STACK_ENV) or "local"


def device_info(device: torch.device) -> Dict[str, object]:
    info: Dict[str, object] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


def describe(device: torch.device) -> Dict[str, object]:
    """Everything report.json records about the environment."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info: Dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "numpy": package_version("numpy"),
        "opencv": package_version("opencv-python-headless") or package_version("opencv-python"),
        "pycocotools": package_version("pycocotools"),
        "aimet": package_version("aimet-torch") or package_version("AimetTorch"),
        "torch_threads": torch.get_num_threads(),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "stack": stack(),
        "app_version": __version__,
        "app_git_commit": git_commit(),
    }
    info.update(hrnet_lib_facts())
    info.update(device_info(device))
    return info
