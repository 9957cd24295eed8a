"""Re-plan a Dot: the same weights, sampled with another exchange ratio (Dot steps after each Dash step).

    python -m morse.replan --dot morse/weights/fmnist_dot_dpm.safetensors --dots-per-dash 2 --out runs/dpm/dpd2
        [--export morse/weights/fmnist_dot_dpm.safetensors]

The card's `dots_per_dash` decides the plans Morse samples with this Dot (and the plans morse.distill and morse.gate
work on), so a Dot that samples better with another ratio than the one it was trained on is a new model, not a
flag to remember: the weights are copied bit for bit and the card records the new ratio, the old one and this
command. `evaluate.run --dots-per-dash K` tries a ratio for one run without a new card. A plan Dot beside the Dot
(morse.sampler) was distilled on the old plans; the harness refuses it in one line until it is distilled again.
"""

import argparse
import json
import sys
from pathlib import Path

from baselines.checkpoint import verify_weights
from baselines.training.cards import publish
from baselines.training.recipe import TrainingError, command_text, one_line_errors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dot", type=Path, required=True, help="the Dot (its card, .json, beside it)")
    p.add_argument("--dots-per-dash", type=int, required=True, help="Dot steps after each Dash step in its plans")
    p.add_argument("--out", type=Path, required=True, help="folder for the re-planned Dot and its card")
    p.add_argument("--export", type=Path, default=None, help="also write the re-planned Dot here with its card")
    return p


def replan(args) -> dict:
    if args.dots_per_dash < 1:
        raise TrainingError(f"morse.replan --dots-per-dash {args.dots_per_dash}: give 1 or more Dot steps per Dash "
                            "step")
    card_path = args.dot.with_suffix(".json")
    if not args.dot.exists() or not card_path.exists():
        raise TrainingError(f"morse.replan: need a Dot and its card, {args.dot} and {card_path}; train one with "
                            "python -m morse.train")
    verify_weights(args.dot)
    card = json.loads(card_path.read_text())
    before = card.get("dots_per_dash")
    command = command_text("morse.replan", {"dot": args.dot, "dots_per_dash": args.dots_per_dash})
    source = args.dot.resolve()
    card = {**card, "dots_per_dash": args.dots_per_dash,
            "replan": {"dots_per_dash_before": before, "command": command},
            "sections": card.get("sections", []) + [dict(title="Re-planned (morse.replan)", lines=[
                f"These weights are the Dot above, unchanged, sampled with {args.dots_per_dash} Dot steps after each "
                f"Dash step instead of {before}: `{command}`."])]}
    # A copy, so --export may name the Dot it re-plans.
    weights = args.dot.read_bytes()
    publish([args.out / "dot.safetensors"] + ([args.export] if args.export else []),
            lambda path: path.write_bytes(weights) if Path(path).resolve() != source else None, card)
    print(f"saved {args.out / 'dot.safetensors'}: {before} -> {args.dots_per_dash} Dot steps per Dash step")
    return card


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        replan(args)


if __name__ == "__main__":
    sys.exit(main())
