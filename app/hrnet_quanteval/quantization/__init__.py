"""Quantized evaluation with AIMET: the sim the zoo built (``simulate``), its weight encodings files
(``encodings``), and one adapter per AIMET generation (``aimet_legacy`` for 1.22, ``aimet_current`` for 2.x)
over what both share (``base``).
"""
