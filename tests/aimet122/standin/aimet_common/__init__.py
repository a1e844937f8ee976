"""Stand-in for the ``aimet_common/__init__.py`` that AIMET 1.22.2's wheel adds (test fixture, our code).

The package's modules are AIMET 1.22.2's own, read in place from the shared sources: this folder comes first
on the package path only so that our stand-ins for the compiled parts (``libpymo``, ``AimetTensorQuantizer``)
and the generated ``package_info`` are found; everything else resolves to the unchanged sources.
"""
from aimet122_sources import package_dir as _package_dir

__path__.append(_package_dir("aimet_common"))  # noqa: F821  (__path__ is defined for packages)
STANDIN = "AIMET 1.22.2 Python, stand-in numeric core"
