"""Evaluation engines: one interface (``base.Engine``), two implementations side by side.

- ``native``: this package's own pipeline (crops decoded once per run, flip test and decoding on the device);
- ``reference``: the seed's code path through HRNet's patched lib, for parity with upstream.
"""
