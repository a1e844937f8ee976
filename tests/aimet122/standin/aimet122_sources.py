"""Where AIMET 1.22.2's Python sources (the shared test fixture) are, for the stand-in packages.

Order: the environment variable ``AIMET122_PYTHON_SRC`` (the folder that holds ``aimet_common/`` and
``aimet_torch/``), else ``shared/third_party/aimet-1.22.2/python`` inside the checkout or beside it
(``../shared``), the layouts the project's sessions use. The fixture is read in place, never copied.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_VAR = "AIMET122_PYTHON_SRC"
RELATIVE = Path("shared") / "third_party" / "aimet-1.22.2" / "python"


def _is_sources(folder: Path) -> bool:
    return (folder / "aimet_torch" / "quantsim.py").is_file() and (folder / "aimet_common" / "defs.py").is_file()


def find() -> Optional[Path]:
    """The sources folder, or None."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        folder = Path(explicit).resolve()
        return folder if _is_sources(folder) else None
    repo = Path(__file__).resolve().parents[3]          # tests/aimet122/standin/<this> -> the checkout
    for base in (repo, repo.parent):
        folder = base / RELATIVE
        if _is_sources(folder):
            return folder
    return None


def package_dir(name: str) -> str:
    """The source folder of ``aimet_common`` or ``aimet_torch``; ImportError, saying what to set, if absent."""
    folder = find()
    if folder is None:
        raise ImportError(
            "AIMET 1.22.2 Python sources not found: set %s to the folder holding aimet_common/ and aimet_torch/ "
            "(shared/third_party/aimet-1.22.2/python)" % ENV_VAR)
    return str(folder / name)
