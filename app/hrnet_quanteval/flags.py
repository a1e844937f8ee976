"""Parsers for command-line values, shared by the CLI and the container's preflight."""
from __future__ import annotations

import argparse
from typing import Callable, Optional

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def parse_bool(text: str) -> Optional[bool]:
    """true/false/1/0/yes/no (any case); ``auto`` is None. The seed's ``type=bool`` made "False" true."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    if word == "auto":
        return None
    raise argparse.ArgumentTypeError(f"{text!r} is not one of true, false, 1, 0, yes, no, auto")


def int_range(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (and at most ``maximum``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be {bound}")
        return value

    return parse
