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


def _aimet_generation() -> int:
    """2 for aimet-torch 2.x, 1 for AIMET 1.22 (the legacy stack: its Python sources with our stand-ins), 0 for none."""
    if importlib.util.find_spec("aimet_torch") is None:
        return 0
    return 2 if importlib.util.find_spec("aimet_torch.common") is not None else 1


AIMET_GENERATION = _aimet_generation()
HAVE_AIMET = AIMET_GENERATION > 0
AIMET_LABEL = {1: "AIMET 1.22.2 Python, stand-in numeric core", 2: "aimet-torch 2.x"}.get(AIMET_GENERATION, "no AIMET")


def pytest_report_header(config):
    return f"AIMET under test: {AIMET_LABEL}"


def pytest_collection_modifyitems(config, items):
    """AIMET tests run on both generations; a test of one generation's own mechanism (marked ``aimet1`` or
    ``aimet2``) is left out of the other generation's session (deselected, not skipped). Without any AIMET the
    ``aimet`` tests fail on import: both test stacks have one (requirements/test.txt; make test-legacy's stand-ins)."""
    other = {1: "aimet2", 2: "aimet1"}.get(AIMET_GENERATION)
    keep, drop = [], []
    for item in items:
        (drop if other and other in item.keywords else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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


def tiny_hrnet(seed: int = 0) -> torch.nn.Module:
    """A random narrow HRNet with W32's topology and BatchNorm statistics far from (0, 1), so folding matters."""
    torch.manual_seed(seed)
    model = build_hrnet(tiny_spec())
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


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


# -- HRNet's upstream code: its source at the pinned commit and its prepared lib, for the parity tests -------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOW_TO_GET_HRNET = (
    "run the suite through `make test` / `make test-legacy`, which clone the pinned commit from the bundle in "
    "../shared/third_party and prepare a lib for that interpreter; or set HRNET_SRC and HRNET_LIB yourself"
)


def _lib_built_for_this_python(lib: str) -> bool:
    """A prepared lib whose NMS extension was compiled for the running interpreter."""
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return os.path.isfile(os.path.join(lib, "core", "function.py")) and os.path.isfile(
        os.path.join(lib, "nms", "cpu_nms" + suffix)
    )


@pytest.fixture(scope="session")
def hrnet_src() -> str:
    """A checkout of HRNet-Human-Pose-Estimation at the pinned commit (HRNET_SRC, else build/hrnet-src)."""
    for path in (os.environ.get("HRNET_SRC"), os.path.join(ROOT, "build", "hrnet-src")):
        if path and os.path.isfile(os.path.join(path, "lib", "core", "function.py")):
            return path
    pytest.fail(f"HRNet's source is needed and was not found: {HOW_TO_GET_HRNET}")


@pytest.fixture(scope="session")
def hrnet_lib() -> str:
    """HRNet's patched lib prepared for this interpreter (HRNET_LIB, else build/hrnet-lib)."""
    for path in (os.environ.get("HRNET_LIB"), os.path.join(ROOT, "build", "hrnet-lib")):
        if path and _lib_built_for_this_python(path):
            return path
    pytest.fail(f"HRNet's lib prepared for Python {sys.version.split()[0]} is needed and was not found: {HOW_TO_GET_HRNET}")


W32_YAML = os.path.join("experiments", "coco", "hrnet", "w32_256x192_adam_lr1e-3.yaml")


@pytest.fixture(scope="session")
def w32_yaml(hrnet_src) -> str:
    """HRNet's own experiment yaml for W32 at 256x192 (the zoo's hrnet.yaml matches it where evaluation looks)."""
    path = os.path.join(hrnet_src, W32_YAML)
    if not os.path.isfile(path):
        pytest.fail(f"{path} is missing from HRNet's source: {HOW_TO_GET_HRNET}")
    return path
