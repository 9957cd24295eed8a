"""What limits the Dot, one change at a time (issue 30): the rows, the commands that make them, and their table.

    python -m morse.ablation --commands            # the train and evaluate commands of every row
    python -m morse.ablation --table reports/fmnist/ablation   # the table, from the rows' cards and reports
    python -m morse.ablation --per-step extrap     # where a row's learned part helps and hurts, per Dot step
    python -m morse.ablation --final-error extrap  # its samples' distance to the exact Dot's, beside their FD
    python -m morse.ablation --line-length extrap-first-gap  # how well the line predicts the step, by its length
    python -m morse.ablation --error-parts extrap  # its error along the prior's own error and across it
    python -m morse.ablation --against-committed plan-8lsd-eps-copy  # why no Dot here has both

Every row trains with `morse.train` at a quarter of the reuse-full Dot's compute (128 trajectories per budget and
round, 3,000 iterations; that recipe's held-out ratio at this compute was 0.824 against 0.760 at full
compute), changing one thing against the row it names, then is swept by `evaluate.run` against DDIM on seeds 0-999
at 4, 8 and 16 LSD. The table reads each row's Dot card (held-out error, parameters, N) and its speedup.csv; it
imports nothing from the harness, so it states the numbers the harness wrote. The committed table keeps each row's
results.csv and speedup.csv (and a trained row's card) under rows/<row>/ (and each low-budget run under low/<row>/):
`--table` copies them there from runs/ablation/ and reads them from there where this machine has no run of its own,
so the table regenerates on any machine. N is measured in every row's own run, so
on a shared machine speedups move with its load from row to row; the FDs do not (the plans use the card's N).
Rows made with `morse.gate` gate a trained row's Dot instead of training one; rows made with `morse.distill` train a
gated Dot further on the state its groups hand on (plan-8lsd-eps-bound and -unbound an ungated one); the plan-*
rows distil a Dot of its own for one plan, sampled beside the committed Dot (morse.sampler's plan Dots), but for
the plan-8lsd-eps-copy, plan-8lsd-eps-bound/-unbound and plan-8lsd-across* rows, which train an epsilon Dot on the
8-LSD plan alone (or distil one further) and sample it at every budget (only its 8-LSD point is a plan it trained
on). The committed DDIM Dot is the distill-own row
(distill-long-lines-more, distill-long-lines, extrap-first-gap-below900, extrap-first-gap, extrap-first-vp-own and
extrap-first before it); which Dot to commit was decided on seeds 100,000-100,999 (validation.md). The first-group
specialists (extrap-firstonly rows) train on the first group's pairs alone; the low-budget section shows them at 2, 3
and 4 LSD, and validation.md why none replaced the committed Dot.
"""

import argparse
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from baselines.checkpoint import write_text_atomic

RECIPE = ("--task fmnist --solver ddim --dot-ratio 6.0 --budgets 2,3,4,6,8,12,16 --trajectories 128 --rounds 3 "
          "--heldout 64 --iters 3000 --batch-size 64 --lr 0.001 --head-lr-mult 10.0 --width 32 --seed 0 "
          "--latency-batches 64")
DEFAULTS = dict(dots_per_dash=3, m=2, skip_levels=1, lora_rank=4)
RUNS, BUDGETS = Path("runs/ablation"), (4, 8, 16)
TASK = dict(zip(shlex.split(RECIPE)[::2], shlex.split(RECIPE)[1::2]))["--task"]
COMMITTED = Path("reports") / TASK / "ablation"  # --table's folder: its rows/ and low/ hold each run's tables and card
KEPT = ("results.csv", "speedup.csv", "dot.json", "dot.md")  # what a run leaves there


def _committed(name: str) -> Path:
    """Where the report keeps run <name>'s tables and card: rows/<name>, or low/<row> for low-<row>."""
    return COMMITTED / "low" / name[4:] if name.startswith("low-") else COMMITTED / "rows" / name


def _run(name: str) -> Path:
    """runs/ablation/<name> where this machine made it, else its committed copy: the tables and card a run left, so
    a report regenerates without the runs' Dots and pairs."""
    return RUNS / name if (RUNS / name).exists() else _committed(name)


def keep_runs(names) -> list[str]:
    """Copy each named run's tables and card from runs/ablation/ into the committed folder (see _run); the names
    copied."""
    import shutil

    copied = []
    for name in names:
        if not (RUNS / name).exists():
            continue
        dest = _committed(name)
        files = [RUNS / name / f for f in KEPT if (RUNS / name / f).exists()]
        if files:
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, dest / f.name)
            copied.append(name)
    return copied
GAP_GATE = "--learned first-group --prior-factors vp,1 --gap-edges 1.5 --fit-path gated"  # extrap-first-gap's gate
BELOW900_GATE = GAP_GATE.replace("first-group", "first-group --learned-below 900")  # extrap-first-gap-below900's


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    flags: str | None = ""     # beyond RECIPE and DEFAULTS; None: nothing to train (the formula, a gated or old Dot)
    against: str = "extrap"    # the row it changes one thing of
    method: str = "morse"
    dot_of: str | None = None  # sample with another row's Dot (and these sampling options) instead of training
    options: str = ""
    gates: str | None = None   # the trained row whose Dot `morse.gate` gates for this row, instead of training
    gate_flags: str = ""
    commit: str | None = None  # a Dot committed before, taken from this commit of the repository
    distills: str | None = None  # the row whose Dot `morse.distill` starts from, instead of training
    distill_flags: str = ""

    @property
    def dot(self) -> Path | None:
        owner = self.dot_of or (self.name if self.flags is not None or self.gates or self.commit or self.distills
                                else None)
        return RUNS / owner / "dot.safetensors" if owner else None

    def train_command(self) -> str | None:
        if self.commit:
            return " && ".join([f"mkdir -p {RUNS / self.name}"] + [
                f"git show {self.commit}:morse/weights/fmnist_dot.{ext} > {RUNS / self.name}/dot.{ext}"
                for ext in ("safetensors", "json")])
        for tool, source, flags in (("distill", self.distills, self.distill_flags), ("gate", self.gates,
                                                                                       self.gate_flags)):
            if source:  # a tool that starts from another row's Dot
                return (f"python -m morse.{tool} --dot {RUNS / source / 'dot.safetensors'} {flags} "
                        f"--out {RUNS / self.name}").replace("  ", " ")
        if self.flags is None:
            return None
        own = shlex.split(self.flags)
        recipe = shlex.split(RECIPE)
        recipe = " ".join(f"{k} {v}" for k, v in zip(recipe[::2], recipe[1::2]) if k not in own)
        base = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEFAULTS.items() if f"--{k.replace('_', '-')}"
                        not in own)
        return f"python -m morse.train {recipe} {base} {self.flags} --out {RUNS / self.name}".replace("  ", " ")

    def eval_command(self) -> str:
        """One sweep folder for every row, so DDIM's and morse-extrap's cells are sampled once; each row's Dot
        replaces the last one's morse cells (their cache key holds the Dot's checksum), so its tables are copied."""
        options = ",".join(o for o in (f"dot={self.dot}" if self.dot else "", self.options) if o)
        dot = f" --method-options {options}" if options else ""
        methods = ",".join(dict.fromkeys([self.method, "morse-extrap", "ddim"]))
        return (f"mkdir -p {RUNS / self.name} && python -m evaluate.run --methods {methods} "
                f"--budgets {','.join(map(str, BUDGETS))} --num-samples 1000{dot} --out {RUNS / 'eval'} && "
                f"cp {RUNS / 'eval'}/results.csv {RUNS / 'eval'}/speedup.csv {RUNS / self.name}/")


BOUND_FLAGS = ("--budgets 8 --groups all --inputs own --fine 2 --runs 2048 --iters 2000 "
               "--lr 0.00003")  # the plan-8lsd-eps-bound rows' recipe but for the bound
EPS_FLAGS = ("--budgets 2,3,4,6,8,12,16 --groups all --gate-factors learn --inputs own --runs 1024 --iters 3000 "
             "--eps-weight")  # the distill-eps rows' recipe but for the weight


def plan_dots(*dots: tuple[int, str]) -> str:
    """--method-options naming each (k, row): that row's Dot as the Dot of the plans with k Dash steps."""
    return ",".join(f"plan_dot{k}={RUNS / row / 'dot.safetensors'}" for k, row in dots)


ROWS = [
    Row("formula", "no Dot: the extrapolation prior alone at the Dot steps (morse-extrap), priced as Dot calls", None,
        "", "morse-extrap"),
    Row("reuse-full", "the Dot committed before issue 30 (full compute: 256 trajectories, 6,000 iterations; prior "
        "reuse)", None, "", commit="8cd3c7b"),
    Row("reuse", "reuse-full's recipe at a quarter of its compute: prior reuse of z_s, no earlier anchor",
        against=""),
    Row("extrap", "prior: the extrapolation; the Dot sees the earlier anchor and the prior", "--prior extrap", "reuse"),
    Row("extrap-half", "the extrap row's Dot, its learned part halved when sampling", None, dot_of="extrap",
        options="dot_scale=0.5"),
    Row("extrap-blur2", "the extrap row's Dot, its learned part blurred when sampling (Gaussian, sigma 2 pixels): "
        "what its fine detail costs", None, dot_of="extrap", options="dot_blur=2"),
    Row("extrap-gate", "the extrap row's Dot, its learned part gated per noise level and extrapolation slope "
        "(morse.gate: least-squares factors in [0, 1] on pairs of seeds of its own)", None, gates="extrap"),
    Row("extrap-first", "the extrap row's Dot gated as extrap-gate, its learned part kept in the first group only "
        "(no earlier anchor; the prior there is reuse) and the extrapolation alone after it; committed until "
        "extrap-first-vp-own", None,
        "extrap-gate", gates="extrap", gate_flags="--learned first-group"),
    Row("formula-ls", "the formula with a factor per cell on its step from z_s, fitted by least squares (morse.gate "
        "--prior-factors ls, on the extrap-gate row's pairs): one learned number per cell, no network", None,
        "formula", gates="extrap", gate_flags="--learned nowhere --prior-factors ls"),
    Row("formula-vp", "as formula-ls, each factor the one that gives the step the target's spread (--prior-factors "
        "vp)", None, "formula-ls", gates="extrap", gate_flags="--learned nowhere --prior-factors vp"),
    Row("formula-x1.2", "the formula's step from z_s 1.2 times as long everywhere (--prior-factors 1.2)", None,
        "formula", gates="extrap", gate_flags="--learned nowhere --prior-factors 1.2"),
    Row("extrap-first-vp", "extrap-first with formula-vp's factors on the extrapolation", None, "extrap-first",
        gates="extrap", gate_flags="--learned first-group --prior-factors vp"),
    Row("extrap-first-vp-own", "as extrap-first-vp, its factors fitted on pairs of the path it samples (the learned "
        "part in the first group, the formula after it; --fit-path gated) instead of the ungated Dot's; committed "
        "until extrap-first-gap", None,
        "extrap-first-vp", gates="extrap", gate_flags="--learned first-group --prior-factors vp --fit-path gated"),
    Row("extrap-first-gap", "as extrap-first-vp-own, its line factors split by the line's length (--gap-edges 1.5, "
        "lambda_s - lambda_s'): spread-matching on shorter lines, the plain line (factor 1) on longer ones, which "
        "correlate with the step at 0.36 or less (pooled per Dash step); committed until extrap-first-gap-below900",
        None,
        "extrap-first-vp-own", gates="extrap",
        gate_flags=GAP_GATE),
    Row("extrap-first-gap-below900", "as extrap-first-gap, its learned part off at t_i >= 900 (--learned-below 900): "
        "there the first groups of plans of 6 LSD and more take short steps from t = 999, where reusing z_s is nearly "
        "exact and the learned part narrowed the samples (validation.md); committed until distill-long-lines", None,
        "extrap-first-gap",
        gates="extrap",
        gate_flags=BELOW900_GATE),
    Row("extrap-firstonly", "a first-group specialist: trained on the first group's pairs alone (before the second "
        "Dash step; 512 trajectories per budget and round, about as many pairs as extrap's 128 make), its held-out "
        "error measured there too; its learned part after the first group is untrained", "--prior extrap "
        "--pairs-from first-group --trajectories 512"),
    Row("extrap-firstonly-gap", "the extrap-firstonly row's Dot gated as extrap-first-gap: does a specialist's first "
        "group lift the low budgets", None, "extrap-first-gap", gates="extrap-firstonly",
        gate_flags=GAP_GATE),
    Row("extrap-firstonly-copy", "the first-group specialist as a fully fine-tuned copy of the Dash's layers (--body "
        "copy): capacity where the Dot works alone", "--prior extrap --pairs-from first-group --trajectories 512 "
        "--body copy", "extrap-firstonly"),
    Row("extrap-firstonly-copy-gap", "the extrap-firstonly-copy row's Dot gated as extrap-first-gap", None,
        "extrap-firstonly-gap", gates="extrap-firstonly-copy",
        gate_flags=GAP_GATE),
    Row("extrap-firstonly-copy-below900", "the extrap-firstonly-copy row's Dot gated as extrap-first-gap-below900: "
        "the specialist's long first-group steps without its short ones", None, "extrap-firstonly-copy-gap",
        gates="extrap-firstonly-copy",
        gate_flags=BELOW900_GATE),
    Row("plan-8lsd-eps-copy", "an epsilon-trained Dot for the 8-LSD plan alone (--budgets 8), a fully fine-tuned copy "
        "of the Dash's layers (--body copy), as many trajectories as the first-group specialists: how far the "
        "per-step error falls where one plan has the Dot to itself, and what that does to the 8-LSD sample (its 4 "
        "and 16 LSD are plans it never saw)", "--prior extrap --budgets 8 --trajectories 512 --body copy",
        "extrap-firstonly-copy"),
    Row("plan-8lsd-across", "as plan-8lsd-eps-copy with the part of each pair's error across the prior's own error "
        "counted four times (--loss across): the kind of error the mix rows do not have, weighted more",
        "--prior extrap --budgets 8 --trajectories 512 --body copy --loss across --across-weight 4",
        "plan-8lsd-eps-copy"),
    Row("plan-8lsd-across16", "as plan-8lsd-across with that part counted sixteen times (--across-weight 16)",
        "--prior extrap --budgets 8 --trajectories 512 --body copy --loss across --across-weight 16",
        "plan-8lsd-across"),
    Row("plan-8lsd-across-more", "as plan-8lsd-across with four times its trajectories and iterations: does more "
        "data move such a Dot to a smaller error", "--prior extrap --budgets 8 --trajectories 2048 --iters 12000 "
        "--body copy --loss across --across-weight 4", "plan-8lsd-across"),
    Row("plan-8lsd-eps-copy-more", "as plan-8lsd-eps-copy with four times its trajectories and iterations: was its "
        "held-out error (0.711) the floor of a least-squares fit at this capacity (`--against-committed`)",
        "--prior extrap --budgets 8 --trajectories 2048 --iters 12000 --body copy", "plan-8lsd-eps-copy"),
    Row("plan-8lsd-eps-bound", "the plan-8lsd-eps-copy-more Dot (0.616 of the prior's error) distilled on its "
        "groups' ends (morse.distill, every group, pulled to the Dash's ODE solution, the later groups fed its own "
        "trajectory) with its per-step epsilon error, pooled as its card measures it, held at or below 0.68 of the "
        "prior's by a hinge (--eps-bound 0.68 --eps-weight 10): can a Dot keep the point's error and still take what "
        "the group ends teach", None, "plan-8lsd-eps-copy-more", distills="plan-8lsd-eps-copy-more",
        distill_flags=BOUND_FLAGS + " --eps-weight 10 --eps-bound 0.68"),
    Row("plan-8lsd-eps-bound1", "as plan-8lsd-eps-bound with the bound at the prior's error (--eps-bound 1.0): "
        "where between the bound at 0.68 and none the samples reach the formula", None, "plan-8lsd-eps-bound",
        distills="plan-8lsd-eps-copy-more", distill_flags=BOUND_FLAGS + " --eps-weight 10 --eps-bound 1.0"),
    Row("plan-8lsd-eps-unbound", "as plan-8lsd-eps-bound without the bound (no epsilon part in the loss): where the "
        "same distillation takes the Dot's epsilon error when nothing holds it, and what the bound costs the samples",
        None, "plan-8lsd-eps-bound", distills="plan-8lsd-eps-copy-more",
        distill_flags=BOUND_FLAGS),
    Row("plan-8lsd-eps-bound-more", "plan-8lsd-eps-bound's Dot distilled again under the same bound, 3,000 more "
        "iterations (its group ends were still improving at the bound): whether the bound's cost to the samples "
        "shrinks with length", None, "plan-8lsd-eps-bound", distills="plan-8lsd-eps-bound",
        distill_flags=BOUND_FLAGS.replace("--iters 2000", "--iters 3000") + " --eps-weight 10 --eps-bound 0.68"),
    Row("plan-8lsd-eps-bound-more2", "plan-8lsd-eps-bound-more's Dot distilled again under the same bound, 2,000 "
        "more iterations", None, "plan-8lsd-eps-bound-more", distills="plan-8lsd-eps-bound-more",
        distill_flags=BOUND_FLAGS + " --eps-weight 10 --eps-bound 0.68"),
    Row("plan-8lsd-blurring", "as plan-8lsd-eps-copy with the part of each pair's error that blurs the estimate of "
        "x0 counted sixteen times (--loss blurring): the one shape of error the stand-ins found costly",
        "--prior extrap --budgets 8 --trajectories 512 --body copy --loss blurring --blurring-weight 16",
        "plan-8lsd-eps-copy"),
    Row("extrap-firstonly-m1", "the first-group specialist with its body on 16x16 instead of 8x8 (--m 1): is the "
        "map's resolution the limit where the Dot works alone", "--prior extrap --pairs-from first-group "
        "--trajectories 512 --m 1", "extrap-firstonly"),
    Row("extrap-firstonly-m1-below900", "the extrap-firstonly-m1 row's Dot gated as extrap-first-gap-below900", None,
        "extrap-firstonly-copy-below900", gates="extrap-firstonly-m1", gate_flags=BELOW900_GATE),
    Row("reuse-history", "sees the earlier anchor, prior reuse", "--history on", "reuse"),
    Row("extrap-notraj", "trajectory inputs off (x_ts, z_s, the earlier anchor and the prior not shown)",
        "--prior extrap --trajectory-inputs off"),
    Row("extrap-notraj-first", "the extrap-notraj row's Dot gated as extrap-first", None, "extrap-first",
        gates="extrap-notraj", gate_flags="--learned first-group"),
    Row("extrap-skip0", "skip_levels 0: the deepest level, its attention and the mid block back",
        "--prior extrap --skip-levels 0"),
    Row("extrap-skip0-first", "the extrap-skip0 row's Dot gated as extrap-first", None, "extrap-first",
        gates="extrap-skip0", gate_flags="--learned first-group"),
    Row("extrap-skip0-below900", "the extrap-skip0 row's Dot gated as the committed Dot (extrap-first-gap-below900)",
        None, "extrap-first-gap-below900", gates="extrap-skip0", gate_flags=BELOW900_GATE),
    Row("extrap-full", "the extrap row at reuse-full's compute (256 trajectories per budget and round, 6,000 "
        "iterations): is compute the limit with the new prior", "--prior extrap --trajectories 256 --iters 6000"),
    Row("extrap-full-below900", "the extrap-full row's Dot gated as the committed Dot (extrap-first-gap-below900)",
        None, "extrap-first-gap-below900", gates="extrap-full", gate_flags=BELOW900_GATE),
    Row("extrap-full-balance", "extrap-full with its training pairs drawn evenly over the budgets' plans (as "
        "extrap-balance, the quarter-compute row with the lowest held-out error): how far the error falls, and what "
        "that does to the samples", "--prior extrap --trajectories 256 --iters 6000 --balance-budgets",
        "extrap-full"),
    Row("distill-first", "the committed Dot's first group distilled (morse.distill): unrolled through the DDIM steps "
        "and trained on the state it hands to the next Dash step against the exact Dot's, not on each step's "
        "epsilon; the learned part there with factor 1 below t = 900, the later groups as committed (its card names "
        "morse/weights/fmnist_dot.safetensors, which was that row's Dot, sha256 724a4b40, until distill-long-lines "
        "replaced it)", None,
        "extrap-first-gap-below900", distills="extrap-first-gap-below900"),
    Row("distill-first-long", "distill-first at three times the iterations (6,000) and the learning rate (3e-4): its "
        "group-end error was still falling", None, "distill-first", distills="extrap-first-gap-below900",
        distill_flags="--iters 6000 --lr 0.0003"),
    Row("distill-long-lines", "as distill-first-long, and the later groups on lines longer than 1.5 in lambda too "
        "(--groups long-lines: 3, 4, 6 and 8 LSD's, where the committed Dot gives the plain line), each from the exact "
        "trajectory's state; committed until distill-long-lines-more", None, "distill-first-long",
        distills="extrap-first-gap-below900",
        distill_flags="--groups long-lines --iters 6000 --lr 0.0003"),
    Row("distill-long-lines-more", "the distill-long-lines row's Dot distilled again by the same command: 6,000 more "
        "iterations, the cosine schedule restarted (its group-end loss was still falling); committed until distill-own",
        None,
        "distill-long-lines", distills="distill-long-lines",
        distill_flags="--groups long-lines --iters 6000 --lr 0.0003"),
    Row("distill-own", "the distill-long-lines-more row's Dot distilled again with each later group fed that Dot's "
        "own trajectory (--inputs own: where sampling puts it, one DAgger round) and still pulled to the exact "
        "trajectory's end; the committed Dot", None, "distill-long-lines-more", distills="distill-long-lines-more",
        distill_flags="--groups long-lines --inputs own --iters 6000 --lr 0.0003"),
    Row("distill-own-2", "a second round: the distill-own row's Dot distilled by the same command, fed its own "
        "trajectory (chosen against it on the validation seeds: level)", None, "distill-own", distills="distill-own",
        distill_flags="--groups long-lines --inputs own --iters 6000 --lr 0.0003"),
    Row("distill-eps10", "the committed Dot (distill-own's) distilled on every group of every budget with the "
        "per-step epsilon error in the loss, ten times the group end's (--eps-weight 10, each relative to the "
        "starting Dot's or reuse's; the gate's factors learnt): can one Dot keep both, a small epsilon error and the "
        "state its groups hand on", None, "distill-own", distills="distill-own", distill_flags=EPS_FLAGS + " 10"),
    Row("distill-eps1", "as distill-eps10 with the two parts of the loss weighed alike (--eps-weight 1)", None,
        "distill-own", distills="distill-own", distill_flags=EPS_FLAGS + " 1"),
    Row("distill-eps0", "as distill-eps10 without the epsilon part (--eps-weight 0): what the recipe does alone",
        None, "distill-own", distills="distill-own", distill_flags=EPS_FLAGS + " 0"),
    Row("distill-2lsd", "the distill-own row's Dot with the 2-LSD plan's one group distilled alone (--budgets 2): "
        "how far the shared Dot takes 2 LSD, which bounds the 4-LSD speedup, when that group has it to itself and "
        "the other budgets' groups are not guarded (run from morse/weights/fmnist_dot.safetensors, distill-own's "
        "Dot)", None, "distill-own", distills="distill-own", distill_flags="--budgets 2 --runs 2048 --iters 4000 "
        "--lr 0.0003"),
    Row("plan-2lsd", "the committed Dot (distill-own's) with a Dot of its own for the plans with one Dash step (2 "
        "LSD): distill-2lsd's recipe on twice the runs and 2.5 times the iterations, taken by those plans alone "
        "(morse.sampler), so every other budget keeps the shared Dot (committed as fmnist_dot_dash1 until "
        "plan-2lsd-more; run from morse/weights/fmnist_dot.safetensors)", None, "distill-own", dot_of="distill-own",
        options=f"plan_dot1={RUNS / 'plan-2lsd' / 'dot.safetensors'}", distills="distill-own",
        distill_flags="--budgets 2 --runs 4096 --iters 10000 --lr 0.0003"),
    Row("plan-4lsd", "plan-2lsd with a Dot of its own for the plans with three Dash steps (4 LSD) too: its three "
        "groups distilled alone, each later one fed the committed Dot's own trajectory (run from "
        "morse/weights/fmnist_dot.safetensors; at 3e-4 the first group's loss doubled within 500 iterations)", None,
        "plan-2lsd", dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd"), (3, "plan-4lsd")),
        distills="distill-own", distill_flags="--budgets 4 --groups all --inputs own --runs 4096 --iters 6000 "
        "--lr 0.0001"),
    Row("plan-2lsd-more", "plan-2lsd's 2-LSD plan Dot distilled again: 10,000 more iterations on twice the runs "
        "(8,192), the cosine schedule restarted (its held-out group-end RMSE was 0.567 of the starting Dot's, "
        "its training loss 0.46 in RMSE: more runs as well as more steps); committed as fmnist_dot_dash1", None,
        "plan-2lsd", dot_of="distill-own",
        options=f"plan_dot1={RUNS / 'plan-2lsd-more' / 'dot.safetensors'}", distills="plan-2lsd",
        distill_flags="--budgets 2 --runs 8192 --iters 10000 --lr 0.0003"),
    Row("plan-3lsd", "plan-2lsd-more with a Dot of its own for the plans with two Dash steps (3 LSD) too: its two "
        "groups distilled alone from the exact trajectory's state (run from morse/weights/fmnist_dot.safetensors; "
        "committed as fmnist_dot_dash2 until plan-3lsd-own): where 3 LSD is in the curve the 4-LSD speedup is "
        "read between 3 and 4 LSD, not between 2 and 4", None, "plan-2lsd-more", dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd-more"), (2, "plan-3lsd")),
        distills="distill-own", distill_flags="--budgets 3 --groups all --runs 4096 --iters 5000 --lr 0.0003"),
    Row("plan-3lsd-own", "the plan-3lsd row's Dot distilled again, its second group fed that Dot's own trajectory "
        "(--inputs own, one DAgger round) and still pulled to the exact trajectory's end; committed as "
        "fmnist_dot_dash2 until plan-3lsd-fine", None, "plan-3lsd", dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd-more"), (2, "plan-3lsd-own")),
        distills="plan-3lsd", distill_flags="--budgets 3 --groups all --inputs own --runs 4096 --iters 5000 "
        "--lr 0.0003"),
    Row("plan-8lsd-fine", "the committed Dots with one of its own for the 8-LSD plan (five Dash steps), its groups "
        "pulled to the Dash's ODE solution instead of the exact Dot's ends (--fine 2: DPM-Solver++(2M) on the plan's "
        "grid, each step cut in two; at 8 LSD Morse already samples better than the exact Dot), each later group fed "
        "the committed Dot's own trajectory (run from morse/weights/fmnist_dot.safetensors)", None, "plan-3lsd-own",
        dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd-more"), (2, "plan-3lsd-own"), (5, "plan-8lsd-fine")),
        distills="distill-own", distill_flags="--budgets 8 --groups all --inputs own --fine 2 --runs 2048 "
        "--iters 4000 --lr 0.0003"),
    Row("plan-4lsd-fine", "the committed Dots with one of its own for the 4-LSD plan (three Dash steps), its groups "
        "pulled to the Dash's ODE solution (--fine 2) instead of the exact Dot's ends, each later group fed the "
        "committed Dot's own trajectory (run from morse/weights/fmnist_dot.safetensors; plan-4lsd is the same with "
        "the exact Dot's ends)", None, "plan-3lsd-own", dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd-more"), (2, "plan-3lsd-own"), (3, "plan-4lsd-fine")),
        distills="distill-own", distill_flags="--budgets 4 --groups all --inputs own --fine 2 --runs 4096 "
        "--iters 5000 --lr 0.0001"),
    Row("plan-4lsd-fine-own", "that 4-LSD plan Dot distilled again by the same command, its later groups fed its "
        "own trajectory (a second DAgger round); committed as fmnist_dot_dash3", None, "plan-4lsd-fine",
        dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd-more"), (2, "plan-3lsd-own"), (3, "plan-4lsd-fine-own")),
        distills="plan-4lsd-fine", distill_flags="--budgets 4 --groups all --inputs own --fine 2 --runs 4096 "
        "--iters 5000 --lr 0.0001"),
    Row("plan-3lsd-fine", "the committed 3-LSD plan Dot (plan-3lsd-own's) distilled again with its groups pulled "
        "to the Dash's ODE solution (--fine 2) instead of the exact Dot's ends, its later group fed that Dot's own "
        "trajectory: the 3-LSD point bounds the 4-LSD speedup where 3 LSD is in the curve; committed as "
        "fmnist_dot_dash2", None,
        "plan-4lsd-fine-own", dot_of="distill-own",
        options=plan_dots((1, "plan-2lsd-more"), (2, "plan-3lsd-fine"), (3, "plan-4lsd-fine-own")),
        distills="plan-3lsd-own", distill_flags="--budgets 3 --groups all --inputs own --fine 2 --runs 4096 "
        "--iters 5000 --lr 0.0001"),
    Row("extrap-m1", "m = 1: the shared body on 16x16 instead of 8x8", "--prior extrap --m 1"),
    Row("extrap-rank32", "LoRA rank 32", "--prior extrap --lora-rank 32"),
    Row("extrap-rank32-first", "the extrap-rank32 row's Dot gated as extrap-first", None, "extrap-first",
        gates="extrap-rank32", gate_flags="--learned first-group"),
    Row("extrap-balance", "training pairs drawn evenly over the budgets' plans", "--prior extrap --balance-budgets"),
    Row("extrap-balance-first", "the extrap-balance row's Dot gated as extrap-first", None, "extrap-first",
        gates="extrap-balance", gate_flags="--learned first-group"),
    Row("extrap-roundlr", "cosine learning rate restarted at every DAgger round", "--prior extrap --round-lr"),
    Row("extrap-relative", "loss: each pair's error relative to its prior's, not the plain MSE that the last steps "
        "dominate; learning rate 2e-4 (at 1e-3 this loss rose above the untrained Dot's)",
        "--prior extrap --loss relative --lr 0.0002"),
    Row("extrap-amp", "loss: each pair's error weighted by the square of the factor the DDIM step carries it into "
        "the next state by (about 0.6 on the first steps, 0.17 on the last)", "--prior extrap --loss amplified"),
    Row("extrap-across", "loss: the part of each pair's error across the prior's own error counted four times "
        "(--loss across), on every budget's plans: plan-8lsd-across's loss at the shared Dot's scope",
        "--prior extrap --loss across --across-weight 4"),
    Row("extrap-blurring", "loss: the part of each pair's error that blurs the estimate of x0 counted sixteen times "
        "(--loss blurring), on every budget's plans", "--prior extrap --loss blurring --blurring-weight 16"),
    Row("extrap-copy", "no weight sharing: a copy of the Dash's layers, fully fine-tuned (no LoRA)",
        "--prior extrap --body copy"),
    Row("extrap-fresh", "an independent network of the same N: the Dash's layers re-initialised, all trained",
        "--prior extrap --body fresh"),
    Row("extrap-midfeat", "the Dash's mid-block output at the anchor as an input (Clockwork-style), added at the "
        "bottom of the Dot's body", "--prior extrap --dash-features on"),
    Row("extrap-energy", "a generative residual: noise planes in, trained by the energy score of two draws instead of "
        "the MSE (which regresses to the mean and narrows the samples)", "--prior extrap --loss energy"),
    Row("extrap-dpd1", "1 Dot step per Dash step", "--prior extrap --dots-per-dash 1"),
    Row("extrap-dpd2", "2 Dot steps per Dash step", "--prior extrap --dots-per-dash 2"),
    Row("extrap-dpd4", "4 Dot steps per Dash step", "--prior extrap --dots-per-dash 4"),
    Row("extrap-dpd6", "6 Dot steps per Dash step", "--prior extrap --dots-per-dash 6"),
]


def _speedups(path: Path, method: str) -> dict:
    if not path.exists():
        return {}
    df = pd.read_csv(path)
    df = df[(df["method"] == method) & (df["row"] == "budget")]
    return {int(r.budget): r for r in df.itertuples() if int(r.budget) in BUDGETS}


def _cell(r) -> str:
    if r is None:
        return "not run"
    bound = r.bound if isinstance(r.bound, str) else ""
    if bound:
        return f"{bound} {r.speedup:.2f}×"
    return f"{r.speedup:.2f}× [{r.ci_low:.2f}, {r.ci_high:.2f}]"


def _results(path: Path, method: str) -> dict:
    if not path.exists():
        return {}
    df = pd.read_csv(path)
    df = df[df["method"] == method]
    speedup = path.with_name("speedup.csv")  # its metric is the task's primary one; a run with no baseline has none,
    # and then the first metric the harness wrote is (it writes the primary metric first)
    quality = pd.read_csv(speedup)["metric"].iloc[0] if speedup.exists() else df["metric"].iloc[0]
    pick = lambda metric: {int(b): v for b, v in df[df["metric"] == metric][["budget", "value"]].values}  # noqa: E731
    return dict(fd=pick(quality), nfe_dash=pick("nfe_dash"), n=df["N"].dropna().median() if "N" in df else None)


def _fds(res: dict, budgets=BUDGETS) -> str:
    """A run's primary metric at `budgets`, "a / b / c" ("–" where it has none)."""
    return " / ".join(f"{res['fd'][b]:.2f}" if b in res.get("fd", {}) else "–" for b in budgets)


def _card_path(row: Row, committed_card: Path) -> Path:
    return {"formula": committed_card}.get(row.name, _run(row.dot_of or row.name) / "dot.json")


def row_line(row: Row, committed_card: Path) -> str:
    card_path = _card_path(row, committed_card)
    if not card_path.exists():
        return f"| {row.name} | {row.what} | not trained |" + " |" * 8
    card = json.loads(card_path.read_text())
    if row.name == "formula":  # nothing learnt: no parameters, no Dot error of its own
        card = {**card, "trainable_parameters": 0, "heldout_error": {}}
    err, per = card["heldout_error"], card["heldout_error"].get("per_budget", {})
    ratios = " / ".join(f"{per[str(b)]['ratio']:.3f}" if str(b) in per else "–" for b in BUDGETS)
    priors = " / ".join(f"{per[str(b)]['prior_ratio']:.3f}" if str(b) in per else "–" for b in BUDGETS)
    sp, res = (_speedups(_run(row.name) / "speedup.csv", row.method),
               _results(_run(row.name) / "results.csv", row.method))
    fds = _fds(res)
    nfe = " / ".join(f"{res['nfe_dash'][b]:g}" if b in res.get("nfe_dash", {}) else "–" for b in BUDGETS)
    n = res.get("n")
    card_n = card["dot_ratio_measured"].get("64", "–")
    n_text = f"{n:.2f}" if n is not None and not math.isnan(n) else f"{card_n} (card)"
    pooled = lambda key: f"{err[key]:.3f}" if key in err else "–"  # noqa: E731
    gate = card["dot_config"].get("gate") or {}
    params = f"{card['trainable_parameters']:,}"
    plan_dots = [o for o in row.options.split(",") if o.startswith("plan_dot")]
    if plan_dots:  # Dots of their own for some plans (morse.sampler), with the shared Dot's layers
        params += f" + {len(plan_dots)} × {card['trainable_parameters']:,} (plan Dots)"
    if gate and not any(v for r in gate["scale"] for v in r):  # the network gated off: only the fitted factors act
        params = f"0 (+ {sum(map(len, gate.get('prior_scale', [])))} fitted factors)"
    return (f"| {row.name} | {row.what} | {n_text} | {params} | {pooled('ratio')} "
            f"({ratios}) | {pooled('prior_ratio')} ({priors}) | {fds} | {nfe} | "
            + " | ".join(_cell(sp.get(b)) for b in BUDGETS) + " |")


# The mix rows' error in other shapes (morse.sampler.ERROR_SHAPES), each the same size sample by sample.
SHAPE_WHAT = dict(past="reversed: the estimate as far past the Dash's as the pull leaves it short",
                  across="in the prior's error transposed: its texture, pointing across it",
                  fine="in the prior's error's fine detail only (what a blur of sigma 1.5 pixels removes): a Dot right "
                       "on the coarse structure",
                  coarse="in the prior's error's coarse part only (its blur of sigma 1.5 pixels): a Dot right on the "
                         "detail",
                  blurry="none of it along the prior's error: the Dash's estimate of x0 moved towards its own blur "
                         "(sigma 1.5 pixels), what a regression that cannot resolve the detail predicts",
                  noise="as white noise, a new draw at every step (morse.sampler.ERROR_SHAPES)",
                  dot="in the Dot's own direction at that step (its estimate minus the Dash's)",
                  **{"dot-across": "in the Dot's own error transposed: its texture, no longer aligned with the sample",
                     "dot-fine": "in the Dot's own error's fine detail only",
                     "dot-coarse": "in the Dot's own error's coarse part only",
                     "dot-unblurred": "in the Dot's own error less its part along the blurring direction"})
# A trained Dot's own error at each step, rescaled per sample to a share of the prior's (the dot* shapes): whether
# the samples pay for its size or for its direction. (suffix, whose Dot, --method-options naming it, [(a, shape,
# budgets)]); at 8 LSD each Dot samples as it was trained (the shared Dot has no plan Dot there), and the shared ones
# at every budget.
DOT_SHAPED = (("eps-copy", "the epsilon-trained plan-8lsd-eps-copy Dot's",
               f"dot={RUNS}/plan-8lsd-eps-copy/dot.safetensors,",
               [("0", "dot", (8,)), ("0.3", "dot", (8,)), ("0.5", "dot", (8,)), ("0.7", "dot", (8,)),
                ("0", "dot-across", (8,)), ("0", "dot-unblurred", (8,)), ("0", "dot-coarse", (8,)),
                ("0", "dot-fine", (8,))]),
              ("extrap", "the extrap row's Dot's (the shared epsilon Dot at quarter compute, retrained by its row's "
               "command)", f"dot={RUNS}/extrap/dot.safetensors,", [("0", "dot", BUDGETS), ("0.3", "dot", BUDGETS)]),
              ("committed", "the committed Dot's (distill-own's, with its plan Dots)", "",
               [("0", "dot", (8,)), ("0.3", "dot", BUDGETS), ("0.7", "dot", (8,)), ("0", "dot-across", (8,))]))
CEILING = (("formula", "the formula at every Dot step (the formula row)", "formula", "morse-extrap", None, ""),
           ("exact-first", "the Dash at the first group's Dot steps, the formula after it", "exact-first",
            "morse-extrap-exact-first", "morse-extrap", "exact_groups=first"),
           ("exact-later", "the formula in the first group, the Dash at every later Dot step", "exact-later",
            "morse-extrap-exact-later", "morse-extrap", "exact_groups=later"),
           ("oracle", "the Dash at every Dot step", "oracle", "morse-oracle", "morse-oracle,ddim", ""),
           *((f"mix-{a}", f"at every Dot step the formula moved {a} of the way to the Dash: a Dot whose error is "
              f"{1 - float(a):.1f} of the prior's at every step, all of it a pull towards the prior", f"mix-{a}",
              f"morse-extrap-mix{a}", "morse-extrap", f"exact_mix={a}") for a in ("0.1", "0.3", "0.5", "0.7")),
           *((f"mix-{a}-{shape}", f"mix-{a}'s error, {1 - float(a):.1f} of the prior's in size sample by sample, "
              f"{SHAPE_WHAT[shape]}", f"mix-{a}-{shape}", f"morse-extrap-mix{a}-{shape}", "morse-extrap",
              f"exact_mix={a},exact_shape={shape}")
             for a, shape in (("0.3", "past"), ("0", "past"), ("0.3", "across"), ("0.3", "fine"),
                              ("0.3", "coarse"), ("0.3", "blurry"), ("0.7", "blurry"), ("0.3", "noise"))),
           *((f"mix-{a}-floor{f}", f"mix-{a}'s pull with an error of RMS {f} per value added to it (in quadrature, "
              f"along the pull): a floor that makes it worse than the prior where the prior is nearly exact, as a "
              f"trained Dot is", f"mix-{a}-floor{f}", f"morse-extrap-mix{a}-floor{f}", "morse-extrap",
              f"exact_mix={a},exact_floor={f}") for a, f in (("0.3", "0.007"), ("0.5", "0.02"))),
           *((f"mix-{a}-{shape}-{suffix}", f"{whose} error, {1 - float(a):.1f} of the prior's in size sample by "
              f"sample, {SHAPE_WHAT[shape]}", f"mix-{a}-{shape}-{suffix}", f"morse-extrap-mix{a}-{shape}",
              "morse-extrap", f"{dot}exact_mix={a},exact_shape={shape}", budgets)
             for suffix, whose, dot, runs in DOT_SHAPED for a, shape, budgets in runs))


def ceiling() -> list[str]:
    """Where the formula's distance to the exact Dot lies: the Dash at the Dot steps of the first group only, or of
    the later groups only, on the committed Dot's plans, priced as Dot calls (seeds 0-999); and what an error of a
    given size costs when it is a pull towards the prior (the mix rows): the exact Dot's estimate moved back towards
    the formula's, at a share of the way that sets the error, against which a trained Dot's error of the same size
    can be read; what the same size costs in other shapes (the mix-0.3-* rows: which errors the samples pay
    for); and what a trained Dot's own error costs when it is given a size apart from its own, or transposed, or cut
    to a part (the mix-*-dot* rows)."""
    lines = ["| Dot steps | FD at 4 / 8 / 16 LSD | command |", "|---|---|---|"]
    for name, what, folder, method, methods, options, *budgets in CEILING:
        res = _results(_run(folder) / "results.csv", method)
        fds = _fds(res)
        command = "the formula row's" if methods is None else (
            f"`python -m evaluate.run --methods {methods} --budgets {','.join(map(str, (budgets or [BUDGETS])[0]))}"
            " --num-samples 1000"
            f"{f' --method-options {options}' if options else ''} --out {RUNS / folder}`")
        lines.append(f"| {name}: {what} | {fds} | {command} |")
    return lines


# 5,000 seeds at 8 LSD, where 1,000 do not resolve the rows (folder, method, what, the commit whose Dot it ran).
NOISE_RUNS = (("n5000", "ddim", "DDIM", None), ("n5000", "morse-extrap", "the formula", None),
              ("n5000", "morse", "extrap-first", "b7b823d"), ("n5000-own", "morse", "extrap-first-vp-own", "887cd40"),
              ("n5000-gap", "morse", "extrap-first-gap", "0e8ae0a"),
              ("n5000-below900", "morse", "extrap-first-gap-below900", "e0f488c"),
              ("n5000-distill", "morse", "distill-long-lines", "4120677"),
              ("n5000-more", "morse", "distill-long-lines-more", "3478cd3"),
              ("n5000-distill-own", "morse", "distill-own", "3b2563a"),
              ("n5000", "morse-oracle", "the exact Dot", None),
              ("n5000-mix", "morse-extrap-mix0.3", "the exact Dot moved back 0.7 of the way to the formula (mix-0.3)",
               None))


def noise() -> list[str]:
    """The primary metric (FD) at 8 LSD on seeds 0-4,999, with its 95% bootstrap interval: the same sweep at the
    commit where each Dot was the committed one (`python -m evaluate.run --methods morse,morse-extrap,morse-oracle,ddim
    --budgets 8 --num-samples 5000 --out runs/ablation/<folder>`; for mix-0.3, `--methods morse-extrap --method-options
    exact_mix=0.3`)."""
    lines = ["| sampler | quality (the primary metric) at 8 LSD [95% interval] | folder (commit) |", "|---|---|---|"]
    for folder, method, what, commit in NOISE_RUNS:
        path = _run(folder) / "results.csv"
        if not path.exists():
            continue
        df = pd.read_csv(path)
        df = df[(df.method == method) & (df.budget == 8)]
        quality = df["metric"].iloc[0] if len(df) else ""  # the harness writes the primary metric first
        fd, lo, hi = (df[df.metric == m]["value"] for m in (quality, f"{quality}_ci_low", f"{quality}_ci_high"))
        if len(fd):
            lines.append(f"| {what} | {fd.iloc[0]:.2f} [{lo.iloc[0]:.2f}, {hi.iloc[0]:.2f}] | {folder}"
                         f"{f' ({commit})' if commit else ''} |")
    return lines


# The low budgets, where the first group works alone (2 LSD: one Dash step, three Dot steps): rows whose first groups
# differ, each swept into runs/ablation/low (its cached DDIM, formula and oracle cells shared) and copied to low-<row>.
LOW_ROWS = ("extrap-first-gap", "extrap-first-gap-below900", "extrap-firstonly-gap", "extrap-firstonly-copy-gap",
            "extrap-skip0-below900", "extrap-firstonly-m1-below900", "distill-first", "distill-first-long",
            "distill-long-lines", "distill-long-lines-more", "distill-own", "distill-own-2",
            "distill-2lsd", "plan-2lsd", "plan-4lsd", "plan-2lsd-more", "plan-3lsd",
            "plan-3lsd-own", "plan-4lsd-fine", "plan-4lsd-fine-own", "plan-3lsd-fine")
LOW_BUDGETS = (2, 3, 4)


def low_budgets() -> list[str]:
    """The primary metric at 2, 3 and 4 LSD on seeds 0-999, where the first group, with no earlier anchor, is most of
    the plan: `python -m evaluate.run --methods morse,morse-extrap,morse-oracle,ddim --budgets 2,3,4 --num-samples 1000
    --method-options dot=runs/ablation/<row>/dot.safetensors --out runs/ablation/low` (for a row that samples another
    row's Dot with options, such as plan-2lsd, that Dot and its options as in its row's command), its tables copied to
    runs/ablation/low-<row>. Morse's 4-LSD speedup is read on its curve between 2 and 4 LSD, so the 2-LSD point
    bounds it."""
    budgets = " / ".join(map(str, LOW_BUDGETS))
    lines = [f"| sampler | quality (the primary metric) at {budgets} LSD |", "|---|---|"]
    found = [r for r in LOW_ROWS if (_run(f"low-{r}") / "results.csv").exists()]
    for row in found:
        morse = _results(_run(f"low-{row}") / "results.csv", "morse")
        lines.append(f"| Morse, the {row} row's Dot | {_fds(morse, LOW_BUDGETS)} |")
    if found:
        path = _run(f"low-{found[0]}") / "results.csv"
        lines += [f"| {what} | {_fds(_results(path, method), LOW_BUDGETS)} |" for method, what in (
            ("morse-extrap", "the formula"), ("morse-oracle", "the exact Dot"), ("ddim", "DDIM"))]
    return lines


def error_and_quality(committed_card: Path) -> list[str]:
    """Across the rows whose held-out error is measured on every group's pairs (not the first-group specialists'
    own), the rank correlation (Spearman's: Pearson's on ranks) of the pooled epsilon error to the prior with the
    primary metric at each budget (positive: a smaller error goes with a better sample), and the smallest such error
    among the rows that beat the formula at every budget. Issue 30 asks for both at once: a Dot that beats the
    formula with an error at most 0.7 of the prior's."""
    formula = _results(_run("formula") / "results.csv", "morse-extrap")["fd"]
    rows = []
    for row in ROWS:
        path = _card_path(row, committed_card)
        if (row.name == "formula" or "--pairs-from first-group" in (row.flags or "") or "plan_dot" in row.options
                or "--budgets" in (row.flags or "") or not path.exists()):
            # a row with plan Dots shows the shared Dot's card (counted in its own row); a row trained on some
            # budgets alone has its error measured there alone
            continue
        error = json.loads(path.read_text())["heldout_error"].get("prior_ratio")
        fd = _results(_run(row.name) / "results.csv", row.method).get("fd", {})
        if error is not None and all(b in fd for b in BUDGETS):
            rows.append({"row": row.name, "error": error, **{b: fd[b] for b in BUDGETS}})
    df = pd.DataFrame(rows)
    beats = df[[all(r[b] < formula[b] for b in BUDGETS) for _, r in df.iterrows()]]
    lines = ["| rows | rank correlation at 4 / 8 / 16 LSD | rows that beat the formula at 4, 8 and 16 LSD | their "
             "smallest error to the prior (row) | the smallest error of any row (row) |", "|---|---|---|---|---|"]
    rank = lambda b: df["error"].rank().corr(df[b].rank())  # noqa: E731
    low, best = df.loc[df["error"].idxmin()], beats.loc[beats["error"].idxmin()] if len(beats) else None
    lines.append(f"| {len(df)} | {' / '.join(f'{rank(b):+.2f}' for b in BUDGETS)} | {len(beats)} | "
                 + (f"{best['error']:.3f} ({best['row']})" if best is not None else "–")
                 + f" | {low['error']:.3f} ({low['row']}: FD {' / '.join(f'{low[b]:.2f}' for b in BUDGETS)}) |")
    return lines


def table(committed_card: Path) -> list[str]:
    head = ["| row | change | N (batch 64) | trainable parameters | held-out ratio to reuse, pooled (4 / 8 / 16 LSD) "
            "| to the prior, pooled (4 / 8 / 16) | quality (the primary metric) at 4 / 8 / 16 LSD "
            "| Dash NFE at 4 / 8 / 16 | speedup over DDIM at 4 LSD | 8 LSD | 16 LSD |", "|" + "---|" * 11]
    return head + [row_line(r, committed_card) for r in ROWS]


def per_step(row: str, sample: int = 6000) -> list[str]:
    """Where a row's learned part helps and where it hurts: on `sample` pairs of the row's last DAgger round, the
    Dot's squared epsilon error over its prior's per plan and Dot step, beside the prior's error there (the pooled
    ratio on the card hides that the last steps, where the prior's error is largest, dominate it)."""
    import torch
    from safetensors.torch import load_file

    from baselines.tasks import get_task
    from morse.dot import Dot
    from morse.train import residual_error

    folder = RUNS / row
    card = json.loads((folder / "dot.json").read_text())
    dot = Dot.load(get_task(card["task"]).dash(), folder / "dot.safetensors")
    pairs = load_file(folder / f"pairs-round{card['rounds'] - 1}.safetensors")
    pick = torch.randperm(len(pairs["target"]), generator=torch.Generator().manual_seed(0))[:sample]
    pairs = {k: v[pick] for k, v in pairs.items()}
    lines = ["| plan (LSD) | Dot step t_i | pairs | prior's RMSE | Dot / prior (MSE) |", "|---|---|---|---|---|"]
    for budget in pairs["budget"].unique().tolist():
        for t in pairs["t_i"][pairs["budget"] == budget].unique().flip(0).tolist():
            rows = (pairs["budget"] == budget) & (pairs["t_i"] == t)
            err = residual_error(dot, {k: v[rows] for k, v in pairs.items()})  # the card's measure, on one step
            lines.append(f"| {budget:g} | {int(t)} | {int(rows.sum())} | {err['prior_rmse']:.4f} | "
                         f"{err['prior_ratio'] ** 2:.3f} |")
    return lines


def line_length(row: str) -> list[str]:
    """How far the line through the last two Dash estimates can be trusted: on a gated row's fit pairs (its
    gate-pairs.safetensors), per plan and Dash step s, the line's length lambda_s - lambda_s' and the correlation of
    its step from z_s with the target's step, pooled over the group's Dot steps, sorted by length (the long lines
    correlate weakly, which is why morse.gate --gap-edges gives them factors of their own)."""
    from safetensors.torch import load_file

    from baselines.tasks import get_task
    from morse.dot import Dot
    from morse.prior import log_snr

    folder = RUNS / row
    card = json.loads((folder / "dot.json").read_text())
    dot = Dot.load(get_task(card["task"]).dash(), folder / "dot.safetensors")
    pairs = load_file(folder / "gate-pairs.safetensors")
    later = pairs["t_p"] != pairs["t_s"]
    found = []
    for budget, t_s in sorted({(b, s) for b, s in zip(pairs["budget"][later].tolist(), pairs["t_s"][later].tolist())}):
        rows = later & (pairs["budget"] == budget) & (pairs["t_s"] == t_s)
        z_s, t_p = pairs["z_s"][rows], pairs["t_p"][rows]
        prev = (None, pairs["z_p"][rows], t_p)
        d = (dot.prior_estimate(z_s, pairs["t_i"][rows], pairs["t_s"][rows], prev) - z_s).double().flatten(1)
        w = (pairs["target"][rows] - z_s).double().flatten(1)
        rho = (d * w).sum() / (d.square().sum() * w.square().sum()).sqrt()
        length = (log_snr(dot.alphas_cumprod, t_s) - log_snr(dot.alphas_cumprod, t_p[0])).item()
        found.append((length, budget, t_s, t_p[0].item(), int(rows.sum()), rho.item()))
    return ["| line length (lambda) | plan (LSD) | t_s | t_s' | pairs | correlation with the target's step |",
            "|---|---|---|---|---|---|"] + [f"| {g:.2f} | {b:g} | {int(s)} | {int(p)} | {n} | {r:.2f} |"
                                           for g, b, s, p, n, r in sorted(found)]


def final_error(rows: list[str], samples: int = 128) -> list[str]:
    """Whether a lower epsilon error gives better samples: per budget, the RMS distance of each row's final samples
    (seeds 0 .. samples - 1, a subset of the sweep's) to those of Morse with an exact Dot on the same plans
    (morse-oracle); the spread of their features (the FD classifier's, mean over features of the standard deviation
    over samples) over the exact Dot's samples' spread; and the primary metric the row's sweep measured on seeds
    0-999. The formula is the first row; every row uses its own card's plans."""
    import torch

    from baselines.denoisers import Denoiser
    from baselines.noise import initial_noise
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse.dot import SAMPLING_OPTIONS, Dot
    from morse.interleave import Interleave
    from morse.pretrained import plan_dot_options
    from morse.sampler import Morse, MorseExtrap, MorseOracle

    task = get_task(json.loads((RUNS / "extrap" / "dot.json").read_text())["task"])
    classifier = task.classifier()  # the FD's feature extractor: its penultimate features (evaluate.features)
    spread = lambda x: classifier.features(x.float()).double().std(0).mean()  # noqa: E731
    dash = task.dash().eval()
    denoiser, ddim = Denoiser(dash, task.schedule_config), get_baseline("ddim")
    seeds = list(range(samples))
    noise = initial_noise(seeds, task.image_shape)
    head = ["| row | " + " | ".join(f"distance to the exact Dot's samples at {b} LSD | feature spread over theirs | "
                                      f"FD" for b in BUDGETS) + " |", "|---|" + "---|---|---|" * len(BUDGETS)]
    lines, exact = [], {}  # the exact Dot's samples depend on the plans only: once per (N, Dots per Dash, budget)
    for row in ["formula", *rows]:
        owner = next((r.dot_of or r.name for r in ROWS if r.name == row), row)
        folder = RUNS / ("extrap" if row == "formula" else owner)
        card = json.loads((folder / "dot.json").read_text())
        dot = Dot.load(dash, folder / "dot.safetensors")
        listed = next((r.options for r in ROWS if r.name == row), "")
        options = dict(option.split("=") for option in filter(None, listed.split(",")))
        plan_dots = {k: Dot.load(dash, path) for k, path in plan_dot_options(options).items()}
        for key in options.keys() - {f"plan_dot{k}" for k in plan_dots}:  # a sampling-time row (dot_scale, dot_blur)
            setattr(dot.config, SAMPLING_OPTIONS[key], float(options[key]))
        args = (ddim, dot, card["dot_ratio_planned"], Interleave(card["dots_per_dash"]))
        sampler = MorseExtrap(*args) if row == "formula" else Morse(*args, plan_dots=plan_dots)
        res = _results(_run(row) / "results.csv", "morse-extrap" if row == "formula" else "morse")
        cells = []
        with torch.inference_mode():
            for b in BUDGETS:
                plans = (card["dot_ratio_planned"], card["dots_per_dash"], b)
                if plans not in exact:
                    exact[plans] = MorseOracle(*args)(denoiser, noise, b, seeds=seeds)[0]
                x, ref = sampler(denoiser, noise, b, seeds=seeds)[0], exact[plans]
                fd = res.get("fd", {}).get(b)
                cells.append(f"{(x - ref).square().mean().sqrt():.4f} | {spread(x) / spread(ref):.3f} | "
                             f"{'–' if fd is None else f'{fd:.2f}'}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return head + lines


def error_parts_of(guess, prior, target) -> dict:
    """Sums over samples of the squared error |guess - target|^2, of the prior's |prior - target|^2, and of the
    error's part along the prior's own error (b r with r = prior - target, b = <e, r> / |r|^2 per sample): where
    b > 0 the guess lies between the target and the prior (the prior's error, shrunk), where b < 0 past the target."""
    import torch

    from morse.train import along_prior

    e, r = (guess - target).double().flatten(1), (prior - target).double().flatten(1)
    along = along_prior(e, r)
    beyond = torch.where((e * r).sum(1) < 0, along, torch.zeros_like(along))
    return dict(error=e.square().sum().item(), prior=r.square().sum().item(), along=along.sum().item(),
                beyond=beyond.sum().item())


def _heldout_of(card: dict) -> tuple[int, int]:
    """(seed, runs per budget) of the held-out pairs a card's error was measured on: its last command's (morse.distill
    measures again with its own)."""
    command = card.get("distill", {}).get("command") or card.get("command", "")
    option = lambda name, default: int(m.group(1)) if (m := re.search(rf"--{name} (\d+)", command)) else default  # noqa: E731
    return option("seed", 0), option("heldout", card.get("heldout_runs_per_budget", 64))


def _heldout_estimates(row: str, runs: int | None = None):
    """(card, the Dash's alphas_cumprod, batches): a row's Dot remade on held-out runs of its own path (the card's
    held-out seeds and budgets), each batch a dict of its pairs with the Dot's estimate ("guess") and its prior's
    ("prior") added."""
    import torch

    from baselines.denoisers import Denoiser
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse.dot import Dot
    from morse.interleave import Interleave
    from morse.train import _cond_of, _prev_of, heldout_seeds, sampling_pairs

    folder = RUNS / row
    card = json.loads((folder / "dot.json").read_text())
    if (residual := card["dot_config"].get("residual", "eps")) != "eps":  # the splits below are of epsilon errors
        raise SystemExit(f"morse.ablation: row {row}'s Dot corrects x0 (residual {residual!r}), and these measures "
                         "split epsilon errors: give rows of epsilon-residual Dots")
    task = get_task(card["task"])
    dash = task.dash().eval()
    dot = Dot.load(dash, folder / "dot.safetensors").eval()
    seed, held = _heldout_of(card)
    denoiser = Denoiser(dash, task.schedule_config)

    def batches():
        with torch.inference_mode():
            pairs = sampling_pairs(denoiser, dot, get_baseline(card.get("solver", "ddim")),
                                   Interleave(card["dots_per_dash"]), card["dot_ratio_planned"],
                                   [float(b) for b in card["budgets"]], heldout_seeds(seed, runs or held),
                                   task.image_shape, desc=f"{row} held-out pairs", conditions=task.conditions)
            for k in range(0, len(pairs["target"]), 256):
                b = {n: v[k:k + 256] for n, v in pairs.items()}
                b["guess"] = b["z_s"] + dot(b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"], _cond_of(b),
                                            prev=_prev_of(b))
                b["prior"] = dot.prior_estimate(b["z_s"], b["t_i"], b["t_s"], _prev_of(b))
                yield b

    return card, denoiser.alphas_cumprod, batches()


def error_parts(rows: list[str], runs: int | None = None) -> list[str]:
    """Which way a Dot errs: on held-out runs of its own path (the card's held-out seeds and budgets, the shared
    Dot's as on the card), its epsilon error to the prior's (the card's pooled measure, so it checks the card) and
    the share of the error's energy along the prior's own error (the estimate pulled back towards the prior, the
    kind of error the mix rows of the previous section have alone), of it past the target, and across it (the
    rest: error the prior does not make); beside the primary metric the row's sweep measured on seeds 0-999."""
    lines = ["| row | budgets | epsilon error to the prior (card) | share along the prior's error | of it past the "
             "target | share across it | FD at 4 / 8 / 16 LSD |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        card, _, batches = _heldout_estimates(row, runs)
        sums = dict.fromkeys(("error", "prior", "along", "beyond"), 0.0)
        for b in batches:
            for key, v in error_parts_of(b["guess"], b["prior"], b["target"]).items():
                sums[key] += v
        share = {key: sums[key] / sums["error"] for key in ("along", "beyond")}
        fds = _fds(_results(_run(row) / "results.csv", "morse"))
        lines.append(f"| {row} | {', '.join(f'{float(b):g}' for b in card['budgets'])} | "
                     f"{(sums['error'] / sums['prior']) ** 0.5:.3f} ({card['heldout_error']['prior_ratio']:.3f}) | "
                     f"{share['along']:.3f} | {share['beyond']:.3f} | {1 - share['along']:.3f} | {fds} |")
        print(lines[-1], flush=True)
    return lines


def error_shapes_of(guess, prior, target, x0) -> dict:
    """Sums over samples of the squared error |guess - target|^2, of its fine detail (what a blur of sigma 1.5
    pixels removes) and of the prior's error's, and of the error's part along d = x0 - blur(x0), the direction in
    which an epsilon error moves the estimate of x0 towards its blur (the "blurry" stand-in's), with its sign."""
    from morse.dot import detail
    from morse.train import along_prior

    e, r = guess - target, prior - target
    fine = lambda v: detail(v).double().flatten(1).square().sum(1)  # noqa: E731
    d, flat = detail(x0).double().flatten(1), e.double().flatten(1)
    along, c = along_prior(flat, d), (flat * d).sum(1)
    return dict(error=e.double().square().sum().item(), prior=r.double().square().sum().item(),
                fine=fine(e).sum().item(), prior_fine=fine(r).sum().item(), blurry=along.sum().item(),
                blurring=along[c > 0].sum().item())


def error_shapes(rows: list[str], runs: int | None = None) -> list[str]:
    """What a Dot's error looks like, in the stand-ins' terms: on the held-out runs "Which way the Dot errs" uses,
    the share of the error's energy in fine detail (beside the prior's own error's share), and the share along the
    direction that moves the estimate of x0 towards its blur (the "blurry" stand-in's, which has all of its error
    there) with the part of it that does blur; beside the primary metric the row's sweep measured on seeds 0-999."""
    from baselines.schedule import x0_from_eps

    lines = ["| row | epsilon error to the prior | share in fine detail (the prior's error's) | share along the "
             "blurring direction | of it blurring | FD at 4 / 8 / 16 LSD |", "|---|---|---|---|---|---|"]
    for row in rows:
        _, alphas, batches = _heldout_estimates(row, runs)
        sums = dict.fromkeys(("error", "prior", "fine", "prior_fine", "blurry", "blurring"), 0.0)
        for b in batches:
            x0 = x0_from_eps(alphas, b["x_ti"], b["target"], b["t_i"])
            for key, v in error_shapes_of(b["guess"], b["prior"], b["target"], x0).items():
                sums[key] += v
        lines.append(f"| {row} | {(sums['error'] / sums['prior']) ** 0.5:.3f} | {sums['fine'] / sums['error']:.3f} "
                     f"({sums['prior_fine'] / sums['prior']:.3f}) | {sums['blurry'] / sums['error']:.3f} | "
                     f"{sums['blurring'] / max(sums['blurry'], 1e-30):.3f} | "
                     f"{_fds(_results(_run(row) / 'results.csv', 'morse'))} |")
        print(lines[-1], flush=True)
    return lines


def against_committed(rows: list[str], runs: int | None = None) -> list[str]:
    """Why no Dot here has both a small epsilon error and the committed Dot's samples: on a row's held-out pairs (as
    "Which way the Dot errs" remakes them), the committed Dot's error (its plan Dot's where the plan has one) split
    into the row's Dot's error and the difference of the two Dots' estimates. The difference is a function of the
    Dots' inputs; where the row's Dot is the least-squares fit of the Dash from those inputs its error is
    orthogonal to every such function, so no Dot that sees the same inputs errs less than the row's Dot, and
    whatever a Dot adds to it, the committed Dot's departure included, adds to its error in quadrature. All sizes
    are relative to the prior's error (the row's card's measure)."""
    import torch

    from baselines.tasks import get_task
    from morse.dot import Dot
    from morse.interleave import Interleave
    from morse.pretrained import dot_path, load_dot, plan_dot_paths
    from morse.train import _cond_of, _prev_of

    dash = get_task(TASK).dash().eval()
    shared, card = load_dot(TASK, dash)
    dots = {k: Dot.load(dash, p).eval() for k, p in plan_dot_paths(dot_path(TASK)).items()}
    dot_of = lambda budget: dots.get(sum(Interleave(card["dots_per_dash"]).plan(budget, card["dot_ratio_planned"])),  # noqa: E731
                                     shared.eval())
    fd = lambda row, budgets=(8,): _fds(_results(_run(row) / "results.csv", "morse"), budgets)  # noqa: E731
    lines = ["| row | its error | the committed Dot's | their difference | cosine of the row's error and the "
             "difference | FD at 8 LSD: row / committed |", "|---|---|---|---|---|---|"]
    for row in rows:
        sums = dict.fromkeys(("row", "committed", "shift", "cross", "prior"), 0.0)
        for b in _heldout_estimates(row, runs)[2]:
            committed = torch.empty_like(b["guess"])
            with torch.inference_mode():
                for budget in b["budget"].unique().tolist():
                    m = b["budget"] == budget
                    part = {k: v[m] if torch.is_tensor(v) and len(v) == len(m) else v for k, v in b.items()}
                    committed[m] = part["z_s"] + dot_of(budget)(part["x_ti"], part["x_ts"], part["z_s"], part["t_i"],
                                                                part["t_s"], _cond_of(part), prev=_prev_of(part))
            e, shift = (b["guess"] - b["target"]).double(), (committed - b["guess"]).double()
            for key, v in (("row", e.square()), ("committed", (e + shift).square()), ("shift", shift.square()),
                           ("cross", e * shift), ("prior", (b["prior"] - b["target"]).double().square())):
                sums[key] += v.sum().item()
        size = lambda key, sums=sums: f"{(sums[key] / sums['prior']) ** 0.5:.3f}"  # noqa: E731
        lines.append(f"| {row} | {size('row')} | {size('committed')} | {size('shift')} | "
                     f"{sums['cross'] / (sums['row'] * sums['shift']) ** 0.5:.3f} | {fd(row)} / {fd('distill-own')} |")
        print(lines[-1], flush=True)
    return lines


def group_ends(runs: int = 64, dots: dict | None = None) -> list[str]:
    """The committed Dots' error in the measure they were distilled on, beside the formula's: per budget, the RMSE
    of the state each group hands to the next Dash step (after the last, the sample) against the Dash's ODE
    solution's (DPM-Solver++(2M) on the plan's grid with each step cut in two: morse.distill --fine 2, the plan
    Dots' target) and against the exact Dot's (the Dash at every Dot step: the shared Dot's target), each group fed
    the target trajectory's state and anchors, on held-out runs (the cards' held-out seeds, disjoint from the
    sweep's); each cell pooled over the plan's groups as the card pools the per-step epsilon error (by which the
    committed Dot errs 1.277 times as much as the formula), the last column over the three budgets too.
    `dots`: {budget: Dot} instead of the committed ones (the shared Dot, its plan Dot where the plan has one)."""
    import torch

    from baselines.denoisers import Denoiser
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse.distill import Plans, group_end_error
    from morse.dot import Dot
    from morse.interleave import Interleave
    from morse.pretrained import dot_path, load_dot, plan_dot_paths
    from morse.train import heldout_seeds

    task = get_task(TASK)
    dash = task.dash().eval()
    shared, card = load_dot(TASK, dash)
    interleave, ratio = Interleave(card["dots_per_dash"]), card["dot_ratio_planned"]
    plan_dots = {k: Dot.load(dash, p).eval() for k, p in plan_dot_paths(dot_path(TASK)).items()}
    dots = dots or {b: plan_dots.get(sum(interleave.plan(b, ratio)), shared.eval()) for b in BUDGETS}
    formula = lambda x_ti, x_ts, z_s, t_i, t_s, cond=None, prev=None: shared.prior_estimate(z_s, t_i, t_s, prev) - z_s  # noqa: E731
    denoiser, seeds = Denoiser(dash, task.schedule_config), heldout_seeds(0, runs)
    lines = ["| target | " + " | ".join(f"{b} LSD: formula / committed (ratio)" for b in BUDGETS) + " | pooled ratio |",
             "|---|" + "---|" * (len(BUDGETS) + 1)]
    for fine, target in ((2, "the ODE solution"), (0, "the exact Dot's ends")):
        plans = Plans(denoiser, get_baseline("ddim"), interleave, ratio, BUDGETS, task.conditions, "cpu", fine)
        cells, total = [], {"formula": 0.0, "committed": 0.0}
        for budget in BUDGETS:
            units = [(float(budget), g) for g in range(len(plans.groups(budget)))]
            with torch.inference_mode():
                pool = plans.exact(units, seeds, task.image_shape)
            ends = group_end_error(plans, units, {"formula": formula, "committed": dots[budget]}, pool, seeds)
            sq = {k: sum(e[k] ** 2 for e in ends.values()) for k in total}  # the units' states are alike in size
            total = {k: total[k] + sq[k] for k in total}
            cells.append(f"{(sq['formula'] / len(ends)) ** 0.5:.4f} / {(sq['committed'] / len(ends)) ** 0.5:.4f} "
                         f"({(sq['committed'] / sq['formula']) ** 0.5:.3f})")
        pooled = (total["committed"] / total["formula"]) ** 0.5
        lines.append(f"| {target} | " + " | ".join(cells) + f" | {pooled:.3f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", action="store_true", help="print every row's train and evaluate commands")
    p.add_argument("--table", type=Path, default=None, help="write the table (index.md) into this folder")
    p.add_argument("--per-step", default=None, metavar="ROW", help="print a trained row's Dot / prior error per plan "
                   "and Dot step (from its last round's pairs under runs/ablation/ROW)")
    p.add_argument("--line-length", default=None, metavar="ROW", help="print, per plan and Dash step, the line's "
                   "length and its correlation with the target's step (from a gated row's gate pairs)")
    p.add_argument("--committed-card", type=Path, default=Path(__file__).parent / "weights" / "fmnist_dot.json",
                   help="the committed Dot's card (the formula's row reads its plans' N from it)")
    p.add_argument("--final-error", default=None, metavar="ROWS", help="comma-separated rows whose final samples' "
                   "distance to the exact Dot's to print beside their FD (and the formula's)")
    p.add_argument("--samples", type=int, default=128, help="seeds of --final-error")
    p.add_argument("--error-parts", default=None, metavar="ROWS", help="comma-separated rows (Dots under "
                   "runs/ablation) whose held-out epsilon error to split into the part along the prior's own error "
                   "and the part across it")
    p.add_argument("--error-shapes", default=None, metavar="ROWS", help="comma-separated rows (Dots under "
                   "runs/ablation) whose held-out epsilon error to describe in the stand-ins' terms (fine detail, "
                   "blurring)")
    p.add_argument("--stand-in-error", default=None, metavar="ROWS", help="comma-separated stand-in rows of the "
                   "ceiling table (mix-*) whose epsilon error to the prior's to measure on their own paths")
    p.add_argument("--against-committed", default=None, metavar="ROWS", help="comma-separated rows (Dots under "
                   "runs/ablation) on whose held-out pairs to split the committed Dot's error into the row's and "
                   "the difference of the two Dots")
    p.add_argument("--group-ends", action="store_true", help="measure the committed Dots' group-end error (what "
                   "they were distilled on) beside the formula's, at 4, 8 and 16 LSD")
    args = p.parse_args(argv)
    if args.commands:
        for row in ROWS:
            print(f"# {row.name}: {row.what}\n" + (f"{row.train_command()}\n" if row.train_command() else "")
                  + f"{row.eval_command()}\n")
    steps = per_step(args.per_step) if args.per_step is not None else []
    print("\n".join(steps))
    lengths = line_length(args.line_length) if args.line_length is not None else []
    print("\n".join(lengths))
    finals = final_error(args.final_error.split(","), args.samples) if args.final_error else []
    parts = error_parts(args.error_parts.split(",")) if args.error_parts else []
    shapes = error_shapes(args.error_shapes.split(",")) if args.error_shapes else []
    stand_ins = stand_in_error(args.stand_in_error.split(",")) if args.stand_in_error else []
    print("\n".join(stand_ins))
    split = against_committed(args.against_committed.split(",")) if args.against_committed else []
    ends = group_ends() if args.group_ends else []
    if args.table is not None:
        write_table(args, steps, lengths, finals, parts, stand_ins, shapes, split, ends)


def stand_in_error(names: list[str], seeds: int = 64) -> list[str]:
    """What the stand-in Dots' errors add up to: for each named row of the ceiling table with an exact_mix, its
    epsilon error to the prior's, pooled as a card's held-out error is (the RMS over every Dot step of every run,
    over the prior's) on seeds 0 .. seeds - 1 of its own path at 4, 8 and 16 LSD, per budget and pooled; beside the
    primary metric its sweep measured on seeds 0-999. A stand-in whose error is a fixed share of the prior's has that
    share at every step; the floor rows add an error of fixed size, as a trained Dot's has."""
    import torch

    from baselines.denoisers import Denoiser
    from baselines.noise import initial_noise
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse.interleave import Interleave
    from morse.pretrained import load_dot
    from morse.sampler import MorseExtrap

    task = get_task(TASK)
    dash = task.dash().eval()
    dot, card = load_dot(TASK, dash)
    denoiser, noise = Denoiser(dash, task.schedule_config), initial_noise(list(range(seeds)), task.image_shape)
    # the Dot-shaped rows' error is a share of the prior's by construction (tests/test_prior.py)
    rows = {c[0]: c for c in CEILING if "exact_mix" in c[5] and "exact_shape=dot" not in c[5]}
    lines = ["| stand-in | epsilon error to the prior, pooled (4 / 8 / 16 LSD) | FD at 4 / 8 / 16 LSD |",
             "|---|---|---|"]
    for name in names:
        if name not in rows:
            raise SystemExit(f"--stand-in-error: {name!r} is not a stand-in row; choose from {', '.join(rows)}")
        options = {k: MorseExtrap.OPTIONS[k](v) for k, v in (o.split("=") for o in rows[name][5].split(","))}
        sampler = MorseExtrap(get_baseline("ddim"), dot, card["dot_ratio_planned"], Interleave(card["dots_per_dash"]),
                              **options)
        with torch.inference_mode():
            for budget in BUDGETS:
                sampler(denoiser, noise, float(budget), seeds=list(range(seeds)))
        sums = [sampler.error_sums[float(b)] for b in BUDGETS]
        pooled = (sum(e for e, _ in sums) / sum(p for _, p in sums)) ** 0.5
        per = " / ".join(f"{(e / p) ** 0.5:.3f}" for e, p in sums)
        lines.append(f"| {name} | {pooled:.3f} ({per}) | {_fds(_results(_run(name) / 'results.csv', rows[name][3]))} |")
    return lines


# Sections made from a row's Dot and pairs (runs/ablation only): a --table run that does not make one keeps the
# committed report's, so a machine without the runs regenerates the rest without losing them.
CARRIED = ("row's learned part helps and hurts", "## How far the line can be trusted",
           "## A lower epsilon error is not a better sample", "## Which way the Dot errs",
           "## What the stand-ins' errors add up to", "## What the Dot's error looks like",
           "## Why no Dot here has both", "## The committed Dots' group ends against the formula's")


def _sections(text: str) -> dict[str, list[str]]:
    """A report's "## " sections: heading -> its lines, the heading first, trailing blank lines dropped."""
    found = {}
    for line in text.splitlines():
        if line.startswith("## "):
            found[line] = [line]
        elif found:
            found[next(reversed(found))].append(line)
    for body in found.values():
        while not body[-1]:
            body.pop()
    return found


def write_table(args, steps, lengths, finals, parts=(), stand_ins=(), shapes=(), split=(), ends=()) -> None:
    global COMMITTED
    COMMITTED = args.table
    args.table.mkdir(parents=True, exist_ok=True)
    copied = keep_runs([r.name for r in ROWS] + [c[2] for c in CEILING] + [n[0] for n in NOISE_RUNS]
                       + [f"low-{r}" for r in LOW_ROWS])
    old = args.table / "index.md"
    kept = _sections(old.read_text() if old.exists() else "")
    keep = lambda tag: next(([""] + b for h, b in kept.items() if tag in h), [])  # noqa: E731
    rows = table(args.committed_card)
    lines = ["# What limits the Dot: one change at a time", "", __doc__.split("\n\n", 2)[2].strip(), "", *rows,
             "", "## Commands", ""]
    made = lambda r: f"`{r.train_command()}`, then " if r.train_command() else ""  # noqa: E731
    lines += [f"* **{r.name}** (against {r.against or '—'}): {made(r)}`{r.eval_command()}`" for r in ROWS]
    lines += ["", f"## Where the {args.per_step} row's learned part helps and hurts", "",
              f"`python -m morse.ablation --per-step {args.per_step}`: {per_step.__doc__.split(': ', 1)[1]}",
              "", *steps] if steps else keep(CARRIED[0])
    lines += ["", "## How far the line can be trusted", "",
              f"`python -m morse.ablation --line-length {args.line_length}`: "
              f"{' '.join(line_length.__doc__.split(': ', 1)[1].split())}", "", *lengths
              ] if lengths else keep(CARRIED[1])
    if (_run("exact-first") / "results.csv").exists():
        lines += ["", "## Where the formula's distance to the exact Dot lies", "",
                  " ".join(ceiling.__doc__.split()), "", *ceiling()]
    low = low_budgets()
    if low[2:]:
        lines += ["", "## The low budgets", "", " ".join(low_budgets.__doc__.split()), "", *low]
    if (_run("n5000") / "results.csv").exists():
        lines += ["", "## 5,000 seeds at 8 LSD", "", " ".join(noise.__doc__.split()), "", *noise()]
    lines += ["", "## The epsilon error against the samples' quality", "", " ".join(error_and_quality.__doc__.split()),
              "", *error_and_quality(args.committed_card)]
    lines += ["", "## A lower epsilon error is not a better sample", "",
              f"`python -m morse.ablation --final-error {args.final_error} --samples {args.samples}`: "
              f"{final_error.__doc__.split(': ', 1)[1]}", "", *finals] if finals else keep(CARRIED[2])
    lines += ["", "## Which way the Dot errs", "", f"`python -m morse.ablation --error-parts {args.error_parts}`: "
              f"{' '.join(error_parts.__doc__.split(': ', 1)[1].split())}", "", *parts] if parts else keep(CARRIED[3])
    lines += ["", CARRIED[4], "", f"`python -m morse.ablation --stand-in-error {args.stand_in_error}`: "
              f"{' '.join(stand_in_error.__doc__.split(': ', 1)[1].split())}", "", *stand_ins
              ] if stand_ins else keep(CARRIED[4])
    lines += ["", CARRIED[5], "", f"`python -m morse.ablation --error-shapes {args.error_shapes}`: "
              f"{' '.join(error_shapes.__doc__.split(': ', 1)[1].split())}", "", *shapes
              ] if shapes else keep(CARRIED[5])
    lines += ["", CARRIED[6], "", f"`python -m morse.ablation --against-committed {args.against_committed}`: "
              f"{' '.join(against_committed.__doc__.split(': ', 1)[1].split())}", "", *split
              ] if split else keep(CARRIED[6])
    lines += ["", CARRIED[7], "", "`python -m morse.ablation --group-ends`: "
              f"{' '.join(group_ends.__doc__.split(': ', 1)[1].split(' `dots`')[0].split())}", "", *ends
              ] if ends else keep(CARRIED[7])
    write_text_atomic(old, "\n".join(lines) + "\n")  # a killed run leaves the last complete report
    print("\n".join(rows))
    if copied:
        print(f"kept the tables and cards of {len(copied)} runs under {args.table}/rows and low")


if __name__ == "__main__":
    main()
