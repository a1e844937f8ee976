"""Progress for long loops (a live bar with ETA on a terminal, a few plain lines otherwise) and stage timing."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, TextIO

import torch


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work done out of ``total``; ``update(n)`` after each piece, ``close()`` at the end.

    On a TTY the line is redrawn in place (at most every 0.2 s); elsewhere a plain line is written at
    every 10 % so logs stay readable and free of control characters. ``quiet`` prints nothing.
    """

    def __init__(self, total: int, label: str, stream: Optional[TextIO] = None, quiet: bool = False) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._next_decile = 1

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        fraction = self.done / self.total if self.total else 1.0
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return f"{self.label}: {self.done}/{self.total} ({100 * fraction:3.0f}%) elapsed {_duration(elapsed)} eta {_duration(eta)}"

    def update(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.quiet:
            return
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw >= 0.2 or self.done == self.total:
                width = 24
                filled = int(width * self.done / self.total) if self.total else width
                self.stream.write("\r[" + "#" * filled + "." * (width - filled) + "] " + self._line())
                self.stream.flush()
                self._last_draw = now
        elif self.total and self.done * 10 >= self._next_decile * self.total:
            while self.done * 10 >= self._next_decile * self.total and self._next_decile <= 10:
                self._next_decile += 1
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class StageTimer:
    """Accumulated wall time per named stage (device work is synchronised before reading the clock)."""

    device: torch.device
    seconds: Dict[str, float] = field(default_factory=dict)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def add(self, stage: str, start: float) -> float:
        self.sync()
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - start
        return now
