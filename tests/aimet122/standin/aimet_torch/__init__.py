"""Stand-in for the ``aimet_torch/__init__.py`` that AIMET 1.22.2's wheel adds (test fixture, our code).

All of ``aimet_torch``'s modules are AIMET 1.22.2's own, read in place from the shared sources; the compiled
parts they import live in ``aimet_common`` (see the stand-ins there).
"""
from aimet122_sources import package_dir as _package_dir

__path__.append(_package_dir("aimet_torch"))  # noqa: F821
STANDIN = "AIMET 1.22.2 Python, stand-in numeric core"
