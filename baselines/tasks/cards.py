"""Model cards: the JSON written by a training command, rendered as Markdown beside it."""

import json
import sys
from pathlib import Path


def render(json_path: Path) -> Path:
    card = json.loads(Path(json_path).read_text())
    curve_key = next((k for k in card if k.startswith("loss_per_")), None)
    lines = [f"# Model card: {Path(json_path).stem}", "", f"Reproduce: `{card.get('command', '')}`", "",
             "| field | value |", "|---|---|"]
    for key, value in card.items():
        if key in ("command", curve_key):
            continue
        lines.append(f"| {key} | `{json.dumps(value)}` |")
    if curve_key:
        unit = curve_key.removeprefix("loss_per_")
        lines += ["", f"## Loss curve (mean loss per {unit.replace('_', ' ')})", "", "| block | loss |", "|---|---|"]
        lines += [f"| {i} | {v:.5f} |" for i, v in enumerate(card[curve_key])]
    md = Path(json_path).with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return md


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(render(Path(arg)))
