"""The committed Dots, by task and by the solver whose sampling path they were trained on."""

import json
from pathlib import Path

from morse.dot import Dot

WEIGHTS = Path(__file__).resolve().parent / "weights"


def dot_path(task_name: str, solver: str = "ddim") -> Path:
    """DDIM's Dot keeps the name it had before Dots were per solver: `<task>_dot.safetensors`."""
    suffix = "" if solver == "ddim" else f"_{solver}"
    return WEIGHTS / f"{task_name}_dot{suffix}.safetensors"


def plan_dot_path(path: Path, dash_steps: int) -> Path:
    """Where the Dot of the plans with `dash_steps` Dash steps (morse.sampler) lives beside a Dot:
    `<stem>_dash<k>.safetensors`."""
    return path.with_name(f"{path.stem}_dash{dash_steps}{path.suffix}")


def plan_dot_options(options: dict) -> dict[int, Path]:
    """The plan Dots named by --method-options `plan_dot<k>=FILE`, by their plans' number of Dash steps."""
    prefix = "plan_dot"
    return {int(key[len(prefix):]): Path(value) for key, value in options.items()
            if key.startswith(prefix) and key[len(prefix):].isdigit()}


def plan_dot_paths(path: Path) -> dict[int, Path]:
    """The plan Dots beside the Dot at `path`, by their plans' number of Dash steps."""
    found = {}
    for other in path.parent.glob(f"{path.stem}_dash*{path.suffix}"):
        steps = other.stem[len(path.stem) + len("_dash"):]
        if steps.isdigit():
            found[int(steps)] = other
    return dict(sorted(found.items()))


def load_dot(task_name: str, dash, solver: str = "ddim", path: Path | None = None) -> tuple[Dot, dict]:
    path = path or dot_path(task_name, solver)
    if not path.exists():
        raise FileNotFoundError(f"no Dot trained for solver {solver!r} on task {task_name!r} at {path}: train one "
                                f"with `python -m morse.train --task {task_name} --solver {solver} --export {path}`")
    return Dot.load(dash, path), json.loads(path.with_suffix(".json").read_text())
