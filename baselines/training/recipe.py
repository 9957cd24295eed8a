"""What ties a trainer's outputs to its arguments: the command text its card records (the command that
reproduces it), the resume key its checkpoint is written under, and the one-line error its command line prints
for bad input (`error: ...`, exit 2, as the harness does).

A committed card's command and the key of a run resumed from it must never change (tests/test_training_keys.py
holds the values): a trainer's new flag enters its command only when given (None or False leave it out).
"""

import hashlib
import sys
from contextlib import contextmanager

import torch

from baselines.checkpoint import CheckpointMismatchError, CorruptWeightsError
from baselines.distributed import UnevenBatchError
from baselines.runtime import resolve_device
from baselines.tasks.base import MissingWeightsError
from baselines.tasks.data import MissingDataError


class TrainingError(ValueError):
    """Bad input to a trainer (an argument, a missing file): its command line prints it as one line."""


BAD_INPUT = (TrainingError, CheckpointMismatchError, CorruptWeightsError, MissingWeightsError, MissingDataError,
             UnevenBatchError)


@contextmanager
def one_line_errors():
    """A trainer's command line: bad input ends the process with `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except BAD_INPUT as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def device_of(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def command_text(module: str, flags: dict) -> str:
    """`python -m <module> --flag value ...` in the order of `flags` (argparse dest names); a None or False value
    leaves its flag out, True writes the flag alone (a store_true switch)."""
    words = [f"python -m {module}"]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words.append(f"{flag} {value}")
    return " ".join(words)


def flags_of(args, *names: str) -> dict:
    """The values of `names` in the parsed `args`, in that order, for `command_text`."""
    return {name: getattr(args, name) for name in names}


def resume_key(*parts: str) -> str:
    """The key a checkpoint is written under: a hash of the command (or the arguments) and the checksums of
    every file the run starts from, so that a checkpoint of another recipe or other inputs is refused."""
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]
