"""Errors the CLI turns into one paragraph and a documented exit code, and the stage a run is in."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import traceback
from typing import Iterator, List, Optional

# Exit codes, also listed in the README and in ``hrnet-quanteval --help``.
EXIT_OK = 0  # reproduced, or no published target applies
EXIT_NOT_REPRODUCED = 1  # the reproduction check failed
EXIT_USAGE = 2  # bad flags or bad input data
EXIT_ENVIRONMENT = 3  # GPU, AIMET, artifacts or other environment problem
EXIT_INTERNAL = 4  # an unexpected exception: a bug in hrnet-quanteval (traceback saved)
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


# -- the stage a run is in, for the one paragraph an unexpected exception gets -----------------------------

_stages: List[str] = []


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the work inside, so that an unexpected exception can say where it happened."""
    _stages.append(name)
    try:
        yield
    except BaseException as error:
        remember_stage(error)  # the innermost stage names the failure; outer ones see it already set
        raise
    finally:
        _stages.pop()


def current_stage() -> str:
    return _stages[-1] if _stages else "starting"


def failed_stage(error: BaseException) -> str:
    """The stage that was running when ``error`` was raised (kept on the error as the stack unwinds)."""
    return getattr(error, "hrnet_stage", None) or current_stage()


def remember_stage(error: BaseException) -> None:
    """Pin the innermost running stage to ``error`` before ``stage`` blocks unwind."""
    if not hasattr(error, "hrnet_stage"):
        try:
            error.hrnet_stage = current_stage()  # type: ignore[attr-defined]
        except AttributeError:  # a few builtin exceptions take no attributes
            pass


def save_traceback(error: BaseException, folder: Optional[str] = None) -> str:
    """Write ``error``'s traceback to ``folder/traceback.txt`` (or a new file in the temp folder); its path."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    header = f"hrnet-quanteval internal error in stage: {failed_stage(error)}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n"
    if folder is not None:
        path = os.path.join(folder, "traceback.txt")
        try:
            with open(path, "w") as f:
                f.write(header + text)
            return path
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix="hrnet-quanteval-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(header + text)
    return path


def internal_error_message(error: BaseException, saved: str) -> str:
    """One paragraph: which stage failed, what was raised, where the details are, what to do."""
    what = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
    return (
        f"internal error during {failed_stage(error)} ({what}). This is a bug in hrnet-quanteval, not a problem with "
        f"your input. The traceback is saved in {saved}; please report it with that file (run again with --debug "
        "to print it here)."
    )
