"""Method names -> method objects: the baselines plus Morse wrapping any one-estimate solver."""

from baselines.registry import BASELINES, get_baseline
from morse import Interleave, Morse
from morse.pretrained import load_dot

MORSE_SOLVERS = [n for n, m in BASELINES.items() if m.evals_per_step == 1]
MORSE_NAMES = ["morse"] + [f"morse-{n}" for n in MORSE_SOLVERS if n != "ddim"]


def valid_names() -> list[str]:
    return list(BASELINES) + MORSE_NAMES


def check_names(names: list[str]) -> None:
    bad = [n for n in names if n not in valid_names()]
    if bad:
        raise ValueError(f"unknown method {', '.join(map(repr, bad))}; valid: {', '.join(valid_names())}")


def resolve(name: str, task, dash, dot_ratio: float | None = None, dots_per_dash: int | None = None):
    check_names([name])
    if not name.startswith("morse"):
        return get_baseline(name)
    solver = get_baseline("ddim" if name == "morse" else name[len("morse-"):])
    dot, card = load_dot(task.name, dash)
    return Morse(solver, dot, dot_ratio or card["dot_ratio_planned"],
                 Interleave(dots_per_dash if dots_per_dash is not None else card["dots_per_dash"]))
