"""Where a report comes from and where it goes: the command, the commit, the report folder, and the one error
type every command turns into its one-line exit 2. A module of its own so that every command of the harness
(evaluate.run, its latency-only mode, evaluate.check) imports it without importing each other."""

import shlex
import subprocess
import sys
from pathlib import Path


class BadInput(ValueError):
    """Input the user can fix: the command prints `error: <message>` and exits 2."""


def git_commit(exclude: Path | None = None, root: Path | None = None) -> str:
    """HEAD, with "+dirty" when tracked files differ from it. `exclude` (the run's output folder) does not
    count: regenerating a committed report rewrites its own tracked files, which says nothing about the code."""
    root = root or Path(__file__).resolve().parent.parent
    pathspec = []
    if exclude is not None:
        try:
            pathspec = ["--", ".", f":(exclude){Path(exclude).resolve().relative_to(root.resolve())}"]
        except ValueError:
            pass  # outside the repository: nothing of it is tracked
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *pathspec], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def command_line() -> str:
    return "python -m evaluate.run" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")


def make_folder(out: Path) -> Path:
    """Create the report folder. One whose parent cannot be made (a read-only or virtual filesystem such as
    /proc) is a BadInput; a permission error is left to the command's own "choose a writable --out" line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise
    except OSError as e:
        raise BadInput(f"--out {out}: cannot create it ({e.strerror or e}); choose a folder on a writable "
                       "filesystem") from None
    return out
