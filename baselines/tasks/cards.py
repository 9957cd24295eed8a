"""Model cards: the JSON written by a training command, rendered as Markdown beside it.

A card whose weights were trained in stages (`init`: the weights it started from, with their
checksum and card) lists every stage's command, oldest first, and each stage's table and curve. A card's
`sections` (title and Markdown lines, added by analyses such as morse.scaling) follow its tables.
"""

import json
import sys
from pathlib import Path

from baselines.checkpoint import sha256, write_text_atomic


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


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(render(Path(arg)))
