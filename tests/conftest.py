"""Shared fixtures: a synthetic COCO-format set and a small random HRNet, made once per session."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from hrnet_quanteval.model import build_hrnet, tiny_spec
from hrnet_quanteval.synth import generate

HAVE_AIMET = importlib.util.find_spec("aimet_torch") is not None
NO_AIMET_REASON = (
    "needs AIMET, which this test stack lacks (AIMET 1.22.2 wheels need CUDA, aimet-torch 2.x needs Python >= 3.10)"
)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``aimet`` report themselves as not run, with the reason, where AIMET is not installed."""
    if HAVE_AIMET:
        return
    skip = pytest.mark.skip(reason=NO_AIMET_REASON)
    for item in items:
        if "aimet" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Artifacts and cached FP32 results go to a folder of this session, never to the user's cache."""
    folder = str(tmp_path_factory.mktemp("cache"))
    saved = os.environ.get("HRNET_QUANTEVAL_ARTIFACTS")
    os.environ["HRNET_QUANTEVAL_ARTIFACTS"] = folder
    yield folder
    if saved is None:
        os.environ.pop("HRNET_QUANTEVAL_ARTIFACTS", None)
    else:
        os.environ["HRNET_QUANTEVAL_ARTIFACTS"] = saved


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synth"))
    generate(root, images=12, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(1)
    model = build_hrnet(tiny_spec())
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    torch.save(model.state_dict(), path)
    return path


def run_cli(*args: str, cwd: str = None, env: dict = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m hrnet_quanteval ARGS`` in a subprocess, output captured as text."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hrnet_quanteval", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
