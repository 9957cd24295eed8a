"""What limits the Dot, one change at a time (issue 30): the rows, the commands that make them, and their table.

    python -m morse.ablation --commands            # the train and evaluate commands of every row
    python -m morse.ablation --table reports/fmnist/ablation   # the table, from the rows' cards and reports

Every row trains with `morse.train` at a quarter of the committed Dot's compute (128 trajectories per budget and
round, 3,000 iterations; the committed recipe's held-out ratio at that compute was 0.824 against 0.760 at full
compute), changing one thing against the row it names, then is swept by `evaluate.run` against DDIM on seeds 0-999
at 4, 8 and 16 LSD. The table reads each row's Dot card (held-out error, parameters, N) and its speedup.csv; it
imports nothing from the harness, so it states the numbers the harness wrote.
"""

import argparse
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

RECIPE = ("--task fmnist --solver ddim --dot-ratio 6.0 --budgets 2,3,4,6,8,12,16 --trajectories 128 --rounds 3 "
          "--heldout 64 --iters 3000 --batch-size 64 --lr 0.001 --head-lr-mult 10.0 --width 32 --seed 0 "
          "--latency-batches 64")
DEFAULTS = dict(dots_per_dash=3, m=2, skip_levels=1, lora_rank=4)
RUNS, BUDGETS = Path("runs/ablation"), (4, 8, 16)


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    flags: str = ""            # beyond RECIPE and DEFAULTS
    against: str = "extrap"    # the row it changes one thing of

    def train_command(self) -> str:
        own = shlex.split(self.flags)
        base = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEFAULTS.items() if f"--{k.replace('_', '-')}"
                        not in own)
        return f"python -m morse.train {RECIPE} {base} {self.flags} --out {RUNS / self.name}".replace("  ", " ")

    def eval_command(self) -> str:
        return (f"python -m evaluate.run --methods morse,ddim --budgets {','.join(map(str, BUDGETS))} "
                f"--num-samples 1000 --method-options dot={RUNS / self.name / 'dot.safetensors'} "
                f"--out {RUNS / 'eval'} && cp {RUNS / 'eval'}/results.csv {RUNS / 'eval'}/speedup.csv "
                f"{RUNS / self.name}/")


ROWS = [
    Row("reuse", "the committed recipe: prior reuse of z_s, no earlier anchor", against=""),
    Row("extrap", "prior: the extrapolation; the Dot sees the earlier anchor and the prior", "--prior extrap", "reuse"),
    Row("reuse-history", "sees the earlier anchor, prior reuse", "--history on", "reuse"),
    Row("extrap-notraj", "trajectory inputs off (x_ts, z_s not shown)", "--prior extrap --trajectory-inputs off"),
    Row("extrap-skip0", "skip_levels 0: the deepest level, its attention and the mid block back",
        "--prior extrap --skip-levels 0"),
    Row("extrap-m1", "m = 1 (body on 14x14 of the 28x28 input, 16x16 padded)", "--prior extrap --m 1"),
    Row("extrap-rank32", "LoRA rank 32", "--prior extrap --lora-rank 32"),
    Row("extrap-balance", "training pairs drawn evenly over the budgets' plans", "--prior extrap --balance-budgets"),
    Row("extrap-roundlr", "cosine learning rate restarted at every DAgger round", "--prior extrap --round-lr"),
    Row("extrap-dpd2", "2 Dot steps per Dash step", "--prior extrap --dots-per-dash 2"),
    Row("extrap-dpd4", "4 Dot steps per Dash step", "--prior extrap --dots-per-dash 4"),
]


def _speedups(path: Path) -> dict:
    if not path.exists():
        return {}
    df = pd.read_csv(path)
    df = df[(df["method"] == "morse") & (df["row"] == "budget")]
    return {int(r.budget): r for r in df.itertuples() if int(r.budget) in BUDGETS}


def _cell(r) -> str:
    if r is None:
        return "not run"
    bound = r.bound if isinstance(r.bound, str) else ""
    if bound:
        return f"{bound} {r.speedup:.2f}×"
    return f"{r.speedup:.2f}× [{r.ci_low:.2f}, {r.ci_high:.2f}]"


def _results(path: Path) -> dict:
    if not path.exists():
        return {}
    df = pd.read_csv(path)
    df = df[df["method"] == "morse"]
    pick = lambda metric: {int(b): v for b, v in df[df["metric"] == metric][["budget", "value"]].values}  # noqa: E731
    return dict(fd=pick("fd_fmnist"), nfe_dash=pick("nfe_dash"), n=df["N"].dropna().median() if "N" in df else None)


def row_line(row: Row) -> str:
    card_path = RUNS / row.name / "dot.json"
    if not card_path.exists():
        return f"| {row.name} | {row.what} | not trained |" + " |" * 8
    card = json.loads(card_path.read_text())
    err, per = card["heldout_error"], card["heldout_error"].get("per_budget", {})
    ratios = " / ".join(f"{per[str(b)]['ratio']:.3f}" if str(b) in per else "–" for b in BUDGETS)
    priors = " / ".join(f"{per[str(b)]['prior_ratio']:.3f}" if str(b) in per else "–" for b in BUDGETS)
    sp, res = _speedups(RUNS / row.name / "speedup.csv"), _results(RUNS / row.name / "results.csv")
    fds = " / ".join(f"{res['fd'][b]:.2f}" if b in res.get("fd", {}) else "–" for b in BUDGETS)
    nfe = " / ".join(f"{res['nfe_dash'][b]:g}" if b in res.get("nfe_dash", {}) else "–" for b in BUDGETS)
    n = res.get("n")
    card_n = card["dot_ratio_measured"].get("64", "–")
    n_text = f"{n:.2f}" if n is not None and not math.isnan(n) else f"{card_n} (card)"
    return (f"| {row.name} | {row.what} | {n_text} | {card['trainable_parameters']:,} | {err['ratio']:.3f} "
            f"({ratios}) | {err.get('prior_ratio', float('nan')):.3f} ({priors}) | {fds} | {nfe} | "
            + " | ".join(_cell(sp.get(b)) for b in BUDGETS) + " |")


def table() -> list[str]:
    head = ["| row | change | N (batch 64) | trainable parameters | held-out ratio to reuse, pooled (4 / 8 / 16 LSD) "
            "| to the prior, pooled (4 / 8 / 16) | FD-fmnist at 4 / 8 / 16 LSD | Dash NFE at 4 / 8 / 16 | "
            "speedup over DDIM at 4 LSD | 8 LSD | 16 LSD |", "|" + "---|" * 11]
    return head + [row_line(r) for r in ROWS]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", action="store_true", help="print every row's train and evaluate commands")
    p.add_argument("--table", type=Path, default=None, help="write the table (index.md) into this folder")
    args = p.parse_args(argv)
    if args.commands:
        for row in ROWS:
            print(f"# {row.name}: {row.what}\n{row.train_command()}\n{row.eval_command()}\n")
    if args.table is not None:
        args.table.mkdir(parents=True, exist_ok=True)
        lines = ["# What limits the Dot: one change at a time", "", *table(), "", "## Commands", ""]
        lines += [f"* **{r.name}** (against {r.against or '—'}): `{r.train_command()}`, then `{r.eval_command()}`"
                  for r in ROWS]
        (args.table / "index.md").write_text("\n".join(lines) + "\n")
        print("\n".join(table()))


if __name__ == "__main__":
    main()
