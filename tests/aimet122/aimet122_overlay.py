"""Puts AIMET 1.22.2's own Python sources plus our stand-ins for its compiled parts on the import path.

AIMET 1.22.2 Python, stand-in numeric core: ``import aimet_torch`` / ``import aimet_common`` then resolve to
``tests/aimet122/standin/aimet_{torch,common}/__init__.py`` (ours: they stand in for the files the wheel adds
and append the shared sources to the package path), so every module is AIMET 1.22.2's unchanged source
except ``aimet_common.libpymo``, ``aimet_common.AimetTensorQuantizer`` and ``aimet_common.package_info``.

Two ways to use it:

* a whole interpreter: ``PYTHONPATH=tests/aimet122/standin`` (and ``AIMET122_PYTHON_SRC=<.../python>`` where
  the sources are not at ``shared/third_party/aimet-1.22.2/python`` inside or beside the checkout);
  ``environment()`` returns exactly that for a subprocess;
* inside one test process: ``with activated(): ...`` prepends the folder and, on leaving, takes it off again
  and forgets the modules it loaded, so tests that run later see the interpreter as it was.

Only for the legacy interpreter (Python 3.8, torch 1.9): where another AIMET (aimet-torch 2.x) is installed,
``unavailable_reason()`` says so and nothing is shadowed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional

HERE = Path(__file__).resolve().parent
STANDIN_DIR = HERE / "standin"
LABEL = "AIMET 1.22.2 Python, stand-in numeric core"
ENV_VAR = "AIMET122_PYTHON_SRC"
_OURS = ("aimet_common", "aimet_torch", "aimet122_sources", "aimet122_tf_math")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_math():
    """The stand-in's encoding math (``aimet122_tf_math``) without touching sys.path: loads on any interpreter."""
    if "aimet122_tf_math" in sys.modules:
        return sys.modules["aimet122_tf_math"]
    return _load("aimet122_tf_math_isolated", STANDIN_DIR / "aimet122_tf_math.py")


def sources() -> Optional[Path]:
    """AIMET 1.22.2's Python sources (the folder holding aimet_common/ and aimet_torch/), or None."""
    return _load("aimet122_sources_isolated", STANDIN_DIR / "aimet122_sources.py").find()


def _standin_on_path() -> bool:
    return any(Path(p or ".").resolve() == STANDIN_DIR for p in sys.path)


def unavailable_reason() -> Optional[str]:
    """Why this interpreter cannot run AIMET 1.22.2's Python with the stand-ins; None when it can."""
    if sys.version_info[:2] != (3, 8):
        return "AIMET 1.22.2's Python targets Python 3.8 (the legacy stack); this is %d.%d" % sys.version_info[:2]
    if not _standin_on_path():
        spec = importlib.util.find_spec("aimet_torch")
        if spec is not None:
            return "another AIMET is installed here (%s); the stand-in would shadow it" % spec.origin
    if sources() is None:
        return "AIMET 1.22.2 Python sources not found (set %s)" % ENV_VAR
    return None


def environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a subprocess that imports AIMET 1.22.2 with the stand-ins."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    found = sources()
    if found is not None:
        env[ENV_VAR] = str(found)
    return env


@contextlib.contextmanager
def activated() -> Iterator[None]:
    """AIMET 1.22.2 (sources + stand-ins) importable inside the block; the interpreter as before afterwards."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if _standin_on_path():          # the whole run is already set up (PYTHONPATH): leave it as it is
        yield
        return
    sys.path.insert(0, str(STANDIN_DIR))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        try:
            sys.path.remove(str(STANDIN_DIR))
        except ValueError:
            pass
        for name in [n for n in sys.modules if n.split(".")[0] in _OURS]:
            del sys.modules[name]
        importlib.invalidate_caches()


# --------------------------------------------------------------------------------------------- sim helpers
def count_enabled_quantizers(sim_model) -> Dict[str, int]:
    """Enabled quantizers over QcQuantizeWrapper modules: activation (input + output) and param."""
    from aimet_torch.qc_quantize_op import QcQuantizeWrapper
    activation = param = 0
    for module in sim_model.modules():
        if isinstance(module, QcQuantizeWrapper):
            activation += sum(bool(q.enabled) for q in module.input_quantizers)
            activation += sum(bool(q.enabled) for q in module.output_quantizers)
            param += sum(bool(q.enabled) for q in module.param_quantizers.values())
    return {"activation": activation, "param": param, "total": activation + param}


def frozen_param_quantizers(sim_model) -> Dict[str, object]:
    """``<module>.<param>`` -> quantizer, for every param quantizer whose encoding is frozen."""
    from aimet_torch.qc_quantize_op import QcQuantizeWrapper
    frozen = {}
    for name, module in sim_model.named_modules():
        if isinstance(module, QcQuantizeWrapper):
            for param_name, quantizer in module.param_quantizers.items():
                if quantizer.is_encoding_frozen:
                    frozen[name + "." + param_name] = quantizer
    return frozen


def flat_weight_encodings(sim_model) -> Dict[str, list]:
    """The flat layout AIMET 1.22.2 reads: ``{"<module>.weight": [one dict per channel]}``, from a sim's encodings."""
    from aimet_torch.qc_quantize_op import QcQuantizeWrapper
    out = {}
    for name, module in sim_model.named_modules():
        if not isinstance(module, QcQuantizeWrapper) or "weight" not in module.param_quantizers:
            continue
        quantizer = module.param_quantizers["weight"]
        encodings = quantizer.encoding
        if not quantizer.enabled or encodings is None:
            continue
        if not isinstance(encodings, list):
            encodings = [encodings]
        out[name + ".weight"] = [
            {"bitwidth": int(e.bw), "dtype": "int", "is_symmetric": str(bool(quantizer.use_symmetric_encodings)),
             "max": e.max, "min": e.min, "offset": int(e.offset), "scale": e.delta} for e in encodings]
    return out
