"""Errors the CLI turns into one paragraph and a documented exit code."""
from __future__ import annotations

# Exit codes, also listed in the README and in ``hrnet-quanteval --help``.
EXIT_OK = 0  # reproduced, or no published target applies
EXIT_NOT_REPRODUCED = 1  # the reproduction check failed
EXIT_USAGE = 2  # bad flags or bad input data
EXIT_ENVIRONMENT = 3  # GPU, AIMET, artifacts or other environment problem
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class QuantEvalError(Exception):
    """A problem the user can fix: what is wrong, and what to do about it."""

    exit_code = EXIT_USAGE

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}."


class InputError(QuantEvalError):
    """Bad flags, dataset or checkpoint (exit 2)."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(QuantEvalError):
    """The host or installation cannot run the request (exit 3)."""

    exit_code = EXIT_ENVIRONMENT


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so the run folder is marked before exit 143."""


def from_worker(error: QuantEvalError) -> QuantEvalError:
    """A DataLoader worker's error comes back with its traceback as the message: keep the error's own line."""
    text = error.problem
    if "Original Traceback" not in text:
        return error
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    message = last.split(": ", 1)[-1].rstrip(".")
    return type(error)(message)
