"""Stand-in for ``aimet_common/package_info.py``, which AIMET's build generates from package_info.py.in."""
Product = "AIMET-torch (AIMET 1.22.2 Python, stand-in numeric core)"
Version_Info = "1.22.2"
Postfix = "torch-cpu-standin"
