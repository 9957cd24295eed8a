"""The committed Dots, by task."""

import json
from pathlib import Path

from morse.dot import Dot

WEIGHTS = Path(__file__).resolve().parent / "weights"


def dot_path(task_name: str) -> Path:
    return WEIGHTS / f"{task_name}_dot.safetensors"


def load_dot(task_name: str, dash) -> tuple[Dot, dict]:
    path = dot_path(task_name)
    if not path.exists():
        raise FileNotFoundError(f"no Dot for task {task_name!r} at {path}: train one with "
                                f"`python -m morse.train --task {task_name} --export {path}`")
    return Dot.load(dash, path), json.loads(path.with_suffix(".json").read_text())
