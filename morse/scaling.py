r"""How a Dot's held-out error scales with training compute (pairs x iterations), fitted as a power law.

    python -m morse.scaling runs/scale-*/dot.json runs/ablation/reuse-full/dot.json \
        --card runs/ablation/reuse-full/dot.json

(the study of the reuse recipe, whose full-compute Dot was committed before issue 30: `python -m morse.ablation
--commands` prints how to fetch it; its card with this section is in reports/fmnist/ablation/rows/reuse-full/)

Each input is a Dot card written by `morse.train`; its point is (train_pairs x iters, both fields of the card,
and the held-out on-policy error ratio against reuse of z_s). The fit ratio = a * compute^b is a least-squares line
in log-log. The plot and the fit become a section of `--card` (its Markdown is re-rendered), so the card says how
far more training would take this recipe.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from baselines.checkpoint import write_text_atomic
from baselines.training.cards import render

TITLE = "Held-out error against training compute"


def point(card: dict) -> dict:
    """(pairs, iterations, compute, ratio) of one Dot card, from its fields."""
    return dict(pairs=card["train_pairs"], iters=card["iters"], compute=card["train_pairs"] * card["iters"],
                ratio=card["heldout_error"]["ratio"])


def read_points(paths: list[Path]) -> list[dict]:
    points = []
    for path in paths:
        card = json.loads(path.read_text())
        if not {"train_pairs", "iters", "heldout_error"} <= card.keys():
            raise ValueError(f"{path} is not a Dot card with its training numbers (train_pairs, iters, heldout_error "
                             "fields, as morse.train writes them)")
        points.append(point(card))
    return points


def fit_power_law(compute, ratio) -> dict:
    """ratio = a * compute^b, least squares on logs; with the compute at which it would reach 0.4 (None when the
    fitted exponent does not fall)."""
    if len(compute) < 2 or len(set(compute)) < 2:
        raise ValueError("a power-law fit needs points at two or more different computes")
    b, log_a = np.polyfit(np.log(compute), np.log(ratio), 1)
    resid = np.log(ratio) - (log_a + b * np.log(compute))
    at_04 = math.exp((math.log(0.4) - log_a) / b) if b < 0 else None
    return dict(a=float(math.exp(log_a)), exponent=float(b), compute_at_ratio_0_4=at_04,
                rms_log_residual=float(np.sqrt(np.mean(resid ** 2))))


def plot(points: list[dict], fit: dict, reference_compute: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.array([p["compute"] for p in points], dtype=float)
    r = np.array([p["ratio"] for p in points])
    span = np.geomspace(c.min() / 2, max(c.max() * 2, fit["compute_at_ratio_0_4"] or 0), 100)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(c / reference_compute, r, "o", label="Dots trained (held-out, on-policy)")
    ax.loglog(span / reference_compute, fit["a"] * span ** fit["exponent"], "-",
              label=f"fit: ratio ∝ compute^{fit['exponent']:.3f}")
    ax.axhline(0.4, color="grey", ls=":", label="ratio 0.4")
    ax.axhline(0.5, color="grey", ls="--", label="goal 0.5")
    ax.set_xlabel("training compute (pairs × iterations), relative to 73,728 × 6,000")
    ax.set_ylabel("held-out error / error of reusing z_s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)  # atomic: a kill never leaves a half-written plot
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def section(points: list[dict], fit: dict, image: str, command: str) -> dict:
    rows = ["| pairs | iterations | compute (relative) | held-out ratio |", "|---|---|---|---|"]
    ref = 73_728 * 6_000
    rows += [f"| {p['pairs']:,} | {p['iters']:,} | {p['compute'] / ref:.3g} | {p['ratio']:.3f} |"
             for p in sorted(points, key=lambda p: p["compute"])]
    at = fit["compute_at_ratio_0_4"]
    text = rows + ["", f"Fit: ratio = {fit['a']:.3g} × compute^{fit['exponent']:.4f} (rms log residual "
                       f"{fit['rms_log_residual']:.3f}); ratio 0.4 at compute "
                       + (f"{at:.3g} ({at / ref:.3g}× 73,728 × 6,000)" if at else "never (the fit does not fall)")
                   + ".", "", f"Reproduce: `{command}`", "", f"![{TITLE}]({image})"]
    return dict(title=TITLE, lines=text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cards", nargs="+", type=Path, help="Dot cards (.json) from morse.train runs")
    p.add_argument("--card", type=Path, required=True, help="the card (.json) that gets the plot and the fit")
    args = p.parse_args(argv)
    try:
        points = read_points(args.cards)
        fit = fit_power_law([q["compute"] for q in points], [q["ratio"] for q in points])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    image = args.card.with_name(args.card.stem + "_scaling.png")
    plot(points, fit, 73_728 * 6_000, image)
    card = json.loads(args.card.read_text())
    command = "python -m morse.scaling " + " ".join(str(c) for c in args.cards) + f" --card {args.card}"
    card["sections"] = [s for s in card.get("sections", []) if s["title"] != TITLE]
    card["sections"].append(section(points, fit, image.name, command))
    card["scaling"] = dict(points=points, fit=fit)
    write_text_atomic(args.card, json.dumps(card, indent=1) + "\n")
    render(args.card)
    print(json.dumps(dict(points=points, fit=fit), indent=1))


if __name__ == "__main__":
    main()
