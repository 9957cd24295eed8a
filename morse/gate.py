"""Gate a trained Dot's learned part by step: one factor per noise level and extrapolation slope, fitted in closed form.

    python -m morse.gate --dot runs/ablation/extrap/dot.safetensors --out runs/ablation/extrap-gate

Why (issue 30): per Dot step, the learned part's error has a floor (about 5e-5 in epsilon MSE on the embedded
default, whatever the step), while the prior's error spans four orders of magnitude: at the first Dot step after a
mid-trajectory Dash step the extrapolation is already 10x better than that floor, at the last steps 10x worse. The
plain MSE the Dot trains on is dominated by the last steps, so it never learns to stay silent on the others
(`morse.ablation --per-step`). The gate scales the learned part by c in [0, 1] per cell of (t_i, the slope of the
extrapolation to t_i; the first group, with no earlier anchor, has a column of its own). In each cell c is the
least-squares factor: with r the learned part and d = target - prior over the cell's pairs, c = <r, d> / <r, r>.
The cells depend only on times, so a gate fitted on one set of plans applies to any plan. `--prior-factors` also
fits factors on the extrapolation's step (see fit_gate), and `--gap-edges` splits the columns by the line's length,
lambda_s - lambda_s', a time too; `--learned-below` drops the learned part at high noise levels (the committed DDIM
Dot: `--learned first-group --learned-below 900 --prior-factors vp,1 --gap-edges 1.5 --fit-path gated`). `--prior
extrap` puts a reuse Dot's first-group learned part on the line (the committed DPM-Solver++ Dot: `--prior extrap
--learned first-group --learned-below 900 --prior-factors 0.75,0 --gap-edges 1.5 --fit-path gated`, three quarters
of the line on lines up to 1.5 in lambda, reuse on longer ones).

The pairs come from sampling with the ungated Dot from seeds of their own (seed * 10^6 + 700,000 + i: neither the
training nor the held-out seeds), and are cached in --out (rerun to resume). The held-out error is then measured
as `morse.train` measures it, on its held-out seeds, sampling with the gated Dot. The gated Dot is written with
the trained Dot's card, its held-out error replaced and the gate's own record added.
"""

import argparse
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import torch

from baselines.checkpoint import sha256
from baselines.training.cards import publish
from baselines.training.recipe import TrainingError, command_text, device_of, one_line_errors, resume_key
from morse.dot import Dot
from morse.interleave import Interleave
from morse.train import (
    FEATURES,
    _cached_pairs,
    _cond_of,
    _prev_of,
    heldout_seeds,
    residual_error,
    sampling_pairs,
    setup,
)
from morse.train import parser as train_parser

T_EDGES = [100.0 * k for k in range(1, 10)]  # ten noise-level rows
LEARNED = ("everywhere", "first-group", "nowhere")
SLOPE_EDGES = [0.35, 0.75]  # first group | near the last Dash step | mid-group | far past it (one step per Dash
# step of three Dots falls in each of the last three columns on every plan of the embedded default)
SLOPE_COLS = len(SLOPE_EDGES) + 1  # the slope columns of one line-length bin


def shape(gap_edges=()) -> tuple[int, int]:
    """The table's rows and columns: the first group's column, then the slope columns once per bin of the line's
    length (Dot.gate_cell)."""
    return len(T_EDGES) + 1, 1 + SLOPE_COLS * (len(gap_edges) + 1)


def ungated(gap_edges=()) -> dict:
    """A gate of ones: the Dot as trained, but its pairs record the earlier anchor (the gate's slope needs it)."""
    rows, cols = shape(gap_edges)
    return dict(t_edges=T_EDGES, slope_edges=SLOPE_EDGES, scale=[[1.0] * cols for _ in range(rows)],
                **({"gap_edges": list(gap_edges)} if gap_edges else {}))


PRIOR_FACTORS = ("ls", "vp")


@torch.inference_mode()
def fit_gate(dot: Dot, pairs: dict, min_pairs: int = 32, batch_size: int = 256,
             prior_factors: str | list[str] | None = None, gap_edges=()) -> tuple[dict, list[list[int]]]:
    """The least-squares gate of `dot`'s learned part on `pairs` (with "t_p"), and each cell's pair count. A cell
    with fewer than `min_pairs` pairs takes its column's pooled factor (1 where the column is empty too).

    `prior_factors` also fits a factor k per cell on the extrapolation's step from z_s, d = prior - z_s, against
    w = target - z_s, before the learned part's gate (which then fits what k d leaves): "ls", least squares,
    k = <d, w> / <d, d>; "vp", the factor that gives k d the spread of w, k = sqrt(<w, w> / <d, d>) where <d, w> > 0
    (else 0); a number, that factor everywhere. Clipped to [0, 2]. Why both (issue 30): least squares shrinks k
    where the line is only partly right, which narrows the samples the way a regressed Dot does. With `gap_edges`
    (lambda_s - lambda_s', the line's own length) the table has columns per length bin, and `prior_factors` may
    be a list with one rule per bin, shortest first (issue 30: on the embedded default spread-matching suits
    lines up to 1.5 in lambda, most of which correlate with the target's step at 0.5-0.8, and the plain line,
    factor 1, the longer ones, which correlate at 0.36 or less: `python -m morse.ablation --line-length`)."""
    if dot.config.residual != "eps":
        raise ValueError("morse.gate: the gate scales an epsilon residual; this Dot's residual lives in x0")
    dot.config.gate = ungated(gap_edges)
    prior_scale = None if prior_factors is None else _fit_prior(dot, pairs, min_pairs, batch_size, prior_factors)
    if prior_scale is not None:
        dot.config.gate["prior_scale"] = prior_scale.tolist()
    rd, rr, count = (torch.zeros(shape(gap_edges), dtype=torch.float64) for _ in range(3))
    for b, prev, start, cell in _batches(dot, pairs, batch_size):
        factor = 1.0 if prior_scale is None else dot.gate_factor(b["t_i"], b["t_s"], prev, len(cell), start,
                                                                 "prior_scale")
        line = b["z_s"] + (start - b["z_s"]) * factor
        learned = (b["z_s"] + dot(b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"], _cond_of(b), prev=prev,
                                  features=b.get(FEATURES)) - line).double().flatten(1)
        wanted = (b["target"] - line).double().flatten(1)
        for name, value in ((rd, (learned * wanted).sum(1)), (rr, learned.square().sum(1)),
                            (count, torch.ones(len(cell)))):
            name.view(-1).index_add_(0, cell, value.double())
    scale = _per_cell(rd / rr.clamp_min(1e-300), torch.ones_like(rd, dtype=torch.bool), count >= min_pairs, rd,
                      rr).clamp(0.0, 1.0)
    fitted = {**ungated(gap_edges), "scale": _rounded(scale)}
    if prior_scale is not None:
        fitted["prior_scale"] = _rounded(prior_scale)
    return fitted, count.long().tolist()


def _batches(dot: Dot, pairs: dict, batch_size: int):
    """(batch, earlier anchor, prior, each pair's cell) over `pairs` in batches."""
    for k in range(0, len(pairs["target"]), batch_size):
        b = {n: v[k:k + batch_size] for n, v in pairs.items()}
        prev = _prev_of(b)
        yield b, prev, dot.prior_estimate(b["z_s"], b["t_i"], b["t_s"], prev), _cells(dot, b, prev)


def _fit_prior(dot: Dot, pairs: dict, min_pairs: int, batch_size: int, how: str | list[str]) -> torch.Tensor:
    """The factor per cell on the extrapolation's step from z_s (see fit_gate): one rule, or one per length bin."""
    rules = [how] if isinstance(how, str) else list(how)
    gap_edges = dot.config.gate.get("gap_edges", ())
    bins = len(gap_edges) + 1
    if len(rules) not in (1, bins):
        raise ValueError(f"morse.gate --prior-factors: one rule, or one per line-length bin, got {rules}")
    if any(r in PRIOR_FACTORS for r in rules) and dot.config.prior != "extrap":
        raise ValueError(f"morse.gate --prior-factors: this Dot's prior is {dot.config.prior!r}, with no line to scale")
    dw, dd, ww, count = (torch.zeros(shape(gap_edges), dtype=torch.float64) for _ in range(4))
    for b, _, start, cell in _batches(dot, pairs, batch_size):
        d, w = (start - b["z_s"]).double().flatten(1), (b["target"] - b["z_s"]).double().flatten(1)
        for name, value in ((dw, (d * w).sum(1)), (dd, d.square().sum(1)), (ww, w.square().sum(1)),
                            (count, torch.ones(len(cell)))):
            name.view(-1).index_add_(0, cell, value.double())
    # The first group's column has no line to scale; one number everywhere fills it too (as cards before the
    # length bins recorded it), else it stays 1.
    table = torch.full_like(dw, float(rules[0]) if rules[0] not in PRIOR_FACTORS and len(rules) == 1 else 1.0)
    for k, rule in enumerate(rules * bins if len(rules) == 1 else rules):
        cols = slice(1 + k * SLOPE_COLS, 1 + (k + 1) * SLOPE_COLS)
        if rule not in PRIOR_FACTORS:
            table[:, cols] = float(rule)
            continue
        own = dw / dd.clamp_min(1e-300) if rule == "ls" else (ww / dd.clamp_min(1e-300)).sqrt() * (dw > 0)
        table[:, cols] = _per_cell(own, dd > 0, count >= min_pairs, dw, dd, ww if rule == "vp" else None)[:, cols]
    return table.clamp(0.0, 2.0)


def _per_cell(own, fitted, ok, num, den, ww=None) -> torch.Tensor:
    """Each cell's own factor where it has enough pairs, else its column's pooled one (1 where there is none)."""
    cells = ok & fitted
    num_c, den_c = (num * cells).sum(0), (den * cells).sum(0)
    pooled = num_c / den_c.clamp_min(1e-300) if ww is None else (
        ((ww * cells).sum(0) / den_c.clamp_min(1e-300)).sqrt() * (num_c > 0))
    pooled = torch.where(den_c > 0, pooled, 1.0)
    return torch.where(cells, own, pooled.expand_as(own))


def _rounded(table: torch.Tensor) -> list[list[float]]:
    return [[round(v, 4) for v in r] for r in table.tolist()]


def _cells(dot: Dot, batch: dict, prev) -> torch.Tensor:
    """Each pair's flat index into the gate's table (the cell `Dot.gate_factor` reads)."""
    row, col = dot.gate_cell(batch["t_i"], batch["t_s"], prev, len(batch["t_i"]))
    return (row * len(dot.config.gate["scale"][0]) + col).cpu()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dot", type=Path, required=True, help="a trained Dot (its card, dot.json, beside it)")
    p.add_argument("--out", type=Path, required=True, help="folder for the gated Dot, its card and the fit's pairs")
    p.add_argument("--trajectories", type=int, default=128, help="sampling runs per budget for the fit's pairs")
    p.add_argument("--min-pairs", type=int, default=32, help="a cell with fewer pairs takes its column's factor")
    p.add_argument("--learned", choices=LEARNED, default="everywhere", help="first-group: keep the fitted factors in "
                   "the first group only, and give the prior alone wherever there is an earlier anchor (issue 30: "
                   "there the learned part worsened FD at every budget); nowhere: the prior alone (with "
                   "--prior-factors: the formula with fitted factors)")
    p.add_argument("--learned-below", type=float, default=None, metavar="T", help="keep the learned part only at Dot "
                   "steps with t_i below T, one of the gate's row edges (100, ..., 900): issue 30, in the first "
                   "groups of long plans, short steps from t = 999 where reusing z_s is nearly exact, the learned "
                   "part lowers the epsilon error and narrows the samples")
    p.add_argument("--prior", choices=("extrap",), default=None, help="gate a reuse Dot on the extrapolation: with "
                   "--learned first-group or nowhere its learned part acts only in the first group, where the line "
                   "has no earlier anchor and is reuse, the prior it was trained on, and the line takes the later "
                   "groups (issue 30: Morse-DPM-Solver++'s reuse Dot)")
    p.add_argument("--prior-factors", default=None, metavar="ls|vp|F[,...]", help="also fit a factor per cell on "
                   "the extrapolation's step from z_s: ls (least squares), vp (the target's spread), or F everywhere; "
                   "with --gap-edges, one rule per line-length bin, shortest first (see fit_gate)")
    p.add_argument("--gap-edges", default=None, metavar="G[,...]", help="split the gate's columns by the line's "
                   "length, lambda_s - lambda_s' (the gap between the last two Dash steps), at these edges")
    p.add_argument("--fit-path", choices=("trained", "gated"), default="trained", help="the path the fit's pairs are "
                   "sampled on: the trained Dot's, ungated (default), or the gated Dot's (its learned part where "
                   "--learned keeps it, the plain prior elsewhere: what the fitted factors will be applied on)")
    p.add_argument("--seed", type=int, default=0, help="the training run's --seed (its held-out seeds follow it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--export", type=Path, default=None, help="also write the gated Dot here with its card")
    return p


def open_dot(tool: str, args, how: str) -> tuple:
    """For a command that starts from a Dot (`args.dot`, `args.learned_below`, `args.device`): (its card, the device,
    and morse.train's setup of its task: task, Dash, the Dash's checksum, solver, denoiser), the arguments checked;
    `how` says how to make the Dot it needs."""
    if args.learned_below is not None and args.learned_below not in T_EDGES:
        raise TrainingError(f"{tool} --learned-below: one of the gate's row edges {[int(e) for e in T_EDGES]}, "
                            f"got {args.learned_below:g}")
    card_path = args.dot.with_suffix(".json")
    if not args.dot.exists() or not card_path.exists():
        raise TrainingError(f"{tool}: need a Dot and its card, {args.dot} and {card_path}; {how}")
    card = json.loads(card_path.read_text())
    device = device_of(args.device)
    return card, device, *setup(SimpleNamespace(task=card["task"], data_dir=None, weights=None, prompts=None,
                                                solver=card["solver"]), device)


def gate(args) -> dict:
    card, device, task, dash, _, solver, denoiser = open_dot("morse.gate", args, "train one with python -m morse.train")
    dot = Dot.load(dash, args.dot).to(device)
    prior = args.prior or dot.config.prior  # the gated Dot's
    if prior != dot.config.prior and args.learned == "everywhere":
        raise TrainingError(f"morse.gate --prior {prior}: this Dot learnt on {dot.config.prior!r} after the first "
                            "group too; add --learned first-group (or nowhere)")
    rules, gap_edges = _rules(args.prior_factors, args.gap_edges)
    keep = lambda scale: _kept(scale, args.learned, args.learned_below)  # noqa: E731
    if (args.learned == "first-group" or args.prior_factors is not None) and prior != "extrap":
        raise TrainingError(f"morse.gate --learned first-group and --prior-factors act on the extrapolation; this "
                            f"Dot's prior is {prior!r}: gate a Dot trained with --prior extrap, or add --prior extrap")
    budgets = [float(b) for b in card["budgets"]]
    make_pairs = lambda seeds, desc: sampling_pairs(  # noqa: E731
        denoiser, dot, solver, Interleave(card["dots_per_dash"]), card["dot_ratio_planned"], budgets, seeds,
        task.image_shape, desc=desc, device=device, conditions=task.conditions)
    dot.config.gate = ungated()  # record the earlier anchor, change nothing
    key = [sha256(args.dot), str(args.trajectories), str(args.seed)]
    if args.fit_path == "gated":  # the gated Dot's own path: its prior, its learned part where --learned keeps it
        dot.config.prior = prior
        dot.config.gate["scale"] = keep(dot.config.gate["scale"])
        key += ([args.prior] if args.prior else []) + [args.learned] + (
            [f"{args.learned_below:g}"] if args.learned_below is not None else [])
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = _cached_pairs(args.out / "gate-pairs.safetensors", resume_key(*key),
                          lambda: make_pairs([args.seed * 10**6 + 700_000 + i for i in range(args.trajectories)],
                                             "gate pairs"))
    dot.config.prior = prior  # on the trained path the pairs were sampled with the Dot's own prior
    fitted, counts = fit_gate(dot, pairs, args.min_pairs, prior_factors=rules, gap_edges=gap_edges)
    fitted["scale"] = keep(fitted["scale"])
    dot.config.gate = fitted
    err = residual_error(dot, make_pairs(heldout_seeds(args.seed, card["heldout_runs_per_budget"]), "held-out pairs"),
                         device=device)
    command = command_text("morse.gate", {k: v for k, v in vars(args).items() if k not in ("out", "export", "device")
                                          and not (k == "fit_path" and v == "trained")})
    card = {**training_numbers(card), "dot_config": vars(dot.config), "heldout_error": err,
            "gate": dict(trained_dot_sha256=sha256(args.dot), heldout_error_before=card["heldout_error"],
                         fit_pairs=len(pairs["target"]), pairs_per_cell=counts, command=command),
            "sections": card.get("sections", []) + [_section(fitted, command)]}
    publish([args.out / "dot.safetensors"] + ([args.export] if args.export else []),
            lambda path: dot.save(path, {"card": json.dumps(card)}), card)
    return card


def _rules(prior_factors: str | None, gap_edges: str | None) -> tuple[list[str] | None, list[float]]:
    """--prior-factors and --gap-edges, checked: the rules (one, or one per length bin) and the edges."""
    try:
        edges = [float(e) for e in gap_edges.split(",")] if gap_edges else []
    except ValueError:
        raise TrainingError(f"morse.gate --gap-edges: numbers separated by commas, got {gap_edges!r}") from None
    if edges != sorted(edges):
        raise TrainingError(f"morse.gate --gap-edges: increasing edges, got {gap_edges!r}")
    if prior_factors is None:
        return None, edges
    rules = prior_factors.split(",")
    for rule in rules:
        if rule not in PRIOR_FACTORS:
            try:
                float(rule)
            except ValueError:
                raise TrainingError(f"morse.gate --prior-factors: ls, vp or a number, got {rule!r}") from None
    if len(rules) not in (1, len(edges) + 1):
        raise TrainingError(f"morse.gate --prior-factors: one rule, or one per line-length bin ({len(edges) + 1} "
                            f"with --gap-edges {gap_edges}), got {len(rules)}")
    return rules, edges


def training_numbers(card: dict) -> dict:
    """The card with its training run's iterations, batch size and trajectories as fields (morse.scaling reads them
    there); cards written before those fields existed get them from their command."""
    if all(k in card for k in ("iters", "batch_size", "trajectories")):
        return card
    trained = train_parser().parse_args(shlex.split(card["command"])[3:])
    return {**card, "iters": trained.iters, "batch_size": trained.batch_size, "trajectories": trained.trajectories}


def _kept(scale: list[list[float]], learned: str, below: float | None = None) -> list[list[float]]:
    """The gate table with the learned part zeroed where --learned drops it, and in the rows of t_i >= `below`."""
    keep = {"everywhere": lambda col: True, "first-group": lambda col: col == 0, "nowhere": lambda col: False}[learned]
    lows = [0.0, *T_EDGES]  # each row's lowest t_i
    return [[v if keep(col) and (below is None or low < below) else 0.0 for col, v in enumerate(row)]
            for low, row in zip(lows, scale, strict=True)]


def _section(fitted: dict, command: str) -> dict:
    """The card's account of the gate: how to make it from the trained Dot, and its table."""
    slopes = [f"slope <= {e:g}" for e in fitted["slope_edges"]] + [f"slope > {fitted['slope_edges'][-1]:g}"]
    gaps = fitted.get("gap_edges", [])
    gaps = [""] if not gaps else [f"gap <= {e:g}, " for e in gaps] + [f"gap > {gaps[-1]:g}, "]
    cols = ["first group"] + [g + c for g in gaps for c in slopes]
    bounds = [0.0, *fitted["t_edges"], 999.0]
    lines = [f"These weights are the trained Dot above, gated: `{command}` (with `--dot` the trained Dot's path). "
             "The factor on the learned part per noise level (rows) and extrapolation slope (columns; with the line's "
             "length in lambda, its gap, where --gap-edges splits them):", "",
             "| t_i | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    table = lambda key: [f"| {lo:g}-{hi:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |"  # noqa: E731
                         for lo, hi, row in zip(bounds[:-1], bounds[1:], fitted[key], strict=True)]
    lines += table("scale")
    if "prior_scale" in fitted:
        lines += ["", "The factor on the extrapolation's step from z_s (`--prior-factors`):", "",
                  *lines[2:4], *table("prior_scale")]
    return dict(title="Gate (morse.gate)", lines=lines)


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        card = gate(args)
    before, after = card["gate"]["heldout_error_before"], card["heldout_error"]
    print(json.dumps(dict(gate=card["dot_config"]["gate"]["scale"], prior_ratio_before=before.get("prior_ratio"),
                          prior_ratio=after["prior_ratio"], ratio_before=before["ratio"], ratio=after["ratio"])))


if __name__ == "__main__":
    main()
