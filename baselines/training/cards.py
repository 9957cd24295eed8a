"""Model cards: the JSON written by a training command, rendered as Markdown beside it; and the tail every trainer
ends with (`finish`: weights, card, the checkpoint deleted, one line printed).

A card whose weights were trained in stages (`init`: the weights it started from, with their
checksum and card) lists every stage's command, oldest first, and each stage's table and curve. A card's
`sections` (title and Markdown lines, added by analyses such as morse.scaling) follow its tables.
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from baselines.checkpoint import save_atomic, sha256, write_text_atomic


def lineage(weights: Path) -> dict:
    """The `init` entry of a card whose training starts from `weights`: their path, checksum and, where one sits
    beside them, their own card (so the new card lists every earlier stage)."""
    weights = Path(weights)
    init = dict(path=str(weights), sha256=sha256(weights))
    if weights.with_suffix(".json").exists():
        init["card"] = json.loads(weights.with_suffix(".json").read_text())
    return init


def _stages(card: dict) -> list[dict]:
    init = card.get("init") or {}
    return (_stages(init["card"]) if "card" in init else []) + [card]


def _table(card: dict, level: str) -> list[str]:
    curve_key = next((k for k in card if k.startswith("loss_per_")), None)
    lines = ["| field | value |", "|---|---|"]
    for key, value in card.items():
        if key in ("command", curve_key, "sections", "scaling"):
            continue
        if key == "init" and value:
            value = {k: v for k, v in value.items() if k != "card"}
        lines.append(f"| {key} | `{json.dumps(value)}` |")
    if curve_key:
        unit = curve_key.removeprefix("loss_per_").replace("_", " ")
        lines += ["", f"{level} Loss curve (mean loss per {unit})", "", "| block | loss |", "|---|---|"]
        lines += [f"| {i} | {v:.5f} |" for i, v in enumerate(card[curve_key])]
    return lines


def render(json_path: Path) -> Path:
    stages = _stages(json.loads(Path(json_path).read_text()))
    lines = [f"# Model card: {Path(json_path).stem}", ""]
    if len(stages) == 1:
        lines += [f"Reproduce: `{stages[0].get('command', '')}`", ""] + _table(stages[0], "##")
    else:
        lines += ["Reproduce stage by stage; give each stage `--out` the path that the next stage's `--init` "
                  "reads:", ""]
        lines += [f"{i}. `{st.get('command', '')}`" for i, st in enumerate(stages, 1)]
        for i, st in enumerate(stages, 1):
            lines += ["", f"## Stage {i}" + (" (these weights)" if i == len(stages) else ""), ""]
            lines += _table(st, "###")
    for extra in stages[-1].get("sections", []):  # e.g. morse.scaling's plot and fit
        lines += ["", f"## {extra['title']}", ""] + extra["lines"]
    md = Path(json_path).with_suffix(".md")
    write_text_atomic(md, "\n".join(lines) + "\n")
    return md


def write_card(weights: Path, card: dict) -> Path:
    """The card beside `weights`: JSON, then its Markdown rendering, each written atomically. The card records
    the weights' sha256, which loaders check (baselines.checkpoint.verify_weights)."""
    json_path = Path(weights).with_suffix(".json")
    card = {**card, "sha256": sha256(weights)}
    write_text_atomic(json_path, json.dumps(card, indent=1) + "\n")
    return render(json_path)


def loss_curve(losses: list[float], every: int = 100) -> list[float]:
    """The mean loss of each run of `every` steps, as the model cards record it."""
    return [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)]


def run_fields(wall: float, device, losses: list[float], digits: int = 5) -> dict:
    """The fields every trainer's card ends with: wall time, where it ran, and the loss curve per 100 steps."""
    return dict(wall_time_s=round(wall, 1), device=str(device), threads=torch.get_num_threads(),
                loss_per_100_steps=[round(v, digits) for v in loss_curve(losses)])


def publish(paths: list[Path], save: Callable[[Path], None], card: dict) -> None:
    """`save(path)` the weights at each of `paths`, each with `card` beside it (`write_card`)."""
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save(path)
        write_card(path, card)


def finish(paths: list[Path], weights: dict, card: dict, ckpt: Path | None, wall: float, result: str) -> None:
    """The end of a finished run: `weights` at each of `paths` (atomically) with the card beside them, the run's
    checkpoint `ckpt` (if it keeps one) deleted, and one line saying what was saved and `result`."""
    publish(paths, lambda path: save_atomic(weights, path), card)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    print(f"saved {' and '.join(map(str, paths))} after {wall / 60:.1f} min; {result}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(render(Path(arg)))
