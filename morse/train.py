"""Train a Dot for a task's Dash.

    python -m morse.train --task fmnist --out runs/dot-fmnist

1. Trajectories: the chosen solver runs from per-seed noise with the frozen Dash at every
   step of each plan's fine schedule, so every x_ti is what the solver's own update produces
   from the trajectory (train and test inputs match; with a trained Dot, sampling differs
   only in that Dot steps feed the update). Each non-jump step i gives a pair:
   inputs (x_ti, x_ts, z_s, t_i, t_s), target Dash(x_ti, t_i), s the last jump step.
2. Regression of z_s + Dot(...) onto the target (MSE), only LoRA and new blocks trainable.
3. Held-out trajectories (other seeds) give the residual's error against reusing z_s.

Resumable: checkpoint.safetensors (trainable tensors, optimiser moments, RNG, step) is
rewritten atomically every --checkpoint-every iterations; rerun the same command to resume.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from baselines.checkpoint import load_training_state, save_training_state, sha256
from baselines.denoisers import Denoiser
from baselines.noise import initial_noise, step_generators
from baselines.registry import get_baseline
from baselines.runtime import tune_malloc
from baselines.solvers import solve
from baselines.tasks import get_task
from baselines.tasks.cards import render
from morse.dot import Dot, DotConfig
from morse.interleave import Interleave
from morse.latency import dash_dot_times

FIELDS = ("x_ti", "x_ts", "z_s", "t_i", "t_s", "target")


@torch.inference_mode()
def trajectory_pairs(denoiser, solver, plans, seeds, shape, batch_size=64, desc="trajectories"):
    """Dot training pairs from Dash-driven solver trajectories over each plan's schedule."""
    out = {k: [] for k in FIELDS}
    total = len(plans) * ((len(seeds) + batch_size - 1) // batch_size)
    with tqdm(total=total, desc=desc, unit="batch") as bar:
        for jump in plans:
            for k in range(0, len(seeds), batch_size):
                chunk = seeds[k:k + batch_size]
                sched = solver.make_scheduler(denoiser.schedule_config, len(jump))
                steps = []

                def record(x, t, i, steps=steps):
                    eps = denoiser(x, t)
                    steps.append((x, torch.full((x.shape[0],), float(t)), eps))
                    return eps

                solve(sched, record, initial_noise(chunk, shape), step_generators(chunk), solver.step_kwargs)
                s = 0
                for i, (x, t, eps) in enumerate(steps):
                    if jump[i]:
                        s = i
                        continue
                    for name, v in zip(FIELDS, (x, steps[s][0], steps[s][2], t, steps[s][1], eps),
                                       strict=True):
                        out[name].append(v)
                bar.update()
    return {k: torch.cat(v) for k, v in out.items()}


def dot_loss(dot, batch):
    pred = batch["z_s"] + dot(batch["x_ti"], batch["x_ts"], batch["z_s"], batch["t_i"], batch["t_s"])
    return torch.nn.functional.mse_loss(pred, batch["target"])


@torch.inference_mode()
def residual_error(dot, pairs, batch_size=256) -> dict:
    """|z_s + eta - target| against |z_s - target| (reuse of the last Dash estimate), pooled."""
    num = den = 0.0
    for k in range(0, len(pairs["target"]), batch_size):
        b = {n: v[k:k + batch_size] for n, v in pairs.items()}
        pred = b["z_s"] + dot(b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"])
        num += (pred - b["target"]).double().square().sum().item()
        den += (b["z_s"] - b["target"]).double().square().sum().item()
    return dict(dot_rmse=(num / pairs["target"].numel()) ** 0.5,
                reuse_rmse=(den / pairs["target"].numel()) ** 0.5, ratio=(num / den) ** 0.5)


def _cached_pairs(path: Path, key: str, make):
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return load_file(path)
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    pairs = make()
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in pairs.items()}, tmp, metadata={"key": key})
    tmp.replace(path)
    return pairs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="fmnist")
    p.add_argument("--solver", default="ddim", help="the solver whose updates make the trajectories")
    p.add_argument("--dots-per-dash", type=int, default=3)
    p.add_argument("--dot-ratio", type=float, default=6.0, help="N assumed when planning schedules")
    p.add_argument("--budgets", default="2,3,4,6,8,12,16", help="LSD budgets whose schedules to train on")
    p.add_argument("--trajectories", type=int, default=512, help="per budget")
    p.add_argument("--heldout", type=int, default=64, help="held-out trajectories per budget")
    p.add_argument("--iters", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head-lr-mult", type=float, default=10.0, help="learning-rate factor of the linear path's head")
    p.add_argument("--width", type=int, default=DotConfig.width)
    p.add_argument("--m", type=int, default=DotConfig.m)
    p.add_argument("--lora-rank", type=int, default=DotConfig.lora_rank)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--latency-batches", default="1,64,256", help="batch sizes at which N is measured for the card")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("runs/dot-fmnist"))
    p.add_argument("--export", type=Path, default=None, help="also write the final Dot here (e.g. "
                   "morse/weights/fmnist_dot.safetensors) with its card")
    args = p.parse_args(argv)

    tune_malloc()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    task = get_task(args.task, data_dir=args.data_dir)
    dash = task.dash()
    denoiser = Denoiser(dash, task.schedule_config)
    solver = get_baseline(args.solver)
    interleave = Interleave(args.dots_per_dash)
    budgets = [float(b) for b in args.budgets.split(",")]
    plans = [interleave.plan(b, args.dot_ratio) for b in budgets]
    plans = [pl for pl in plans if not all(pl)]
    # Pairs are valid only for the Dash that made them: its checksum enters the cache key.
    dash_sum = sha256(task.dash_path)[:16]
    data_key = json.dumps([args.task, args.solver, args.dots_per_dash, args.dot_ratio, budgets,
                           args.trajectories, args.heldout, args.seed, dash_sum])
    t0 = time.perf_counter()
    train_seeds = [args.seed * 10**6 + i for i in range(args.trajectories)]
    held_seeds = [args.seed * 10**6 + 500_000 + i for i in range(args.heldout)]
    pairs = _cached_pairs(args.out / "pairs.safetensors", data_key, lambda: trajectory_pairs(
        denoiser, solver, plans, train_seeds, task.image_shape))
    held = _cached_pairs(args.out / "heldout.safetensors", data_key, lambda: trajectory_pairs(
        denoiser, solver, plans, held_seeds, task.image_shape, desc="held-out"))
    pair_time = time.perf_counter() - t0

    dot = Dot(dash, DotConfig(m=args.m, width=args.width, lora_rank=args.lora_rank,
                              schedule=dict(task.schedule_config)))
    trainable = [q for q in dot.parameters() if q.requires_grad]
    # The linear path's coefficients reach O(10) (least-squares fits on Dash trajectories); at the body's
    # learning rate they lag the rest of the Dot for thousands of iterations.
    head = list(dot.linear_coeffs.parameters())
    head_ids = {id(q) for q in head}
    rest = [q for q in trainable if id(q) not in head_ids]
    opt = torch.optim.AdamW([dict(params=rest, lr_mult=1.0), dict(params=head, lr_mult=args.head_lr_mult)],
                            lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    resumable = {k: v for k, v in vars(args).items() if k not in ("export", "latency_batches", "checkpoint_every")}
    train_key = hashlib.sha256((data_key + json.dumps(resumable, default=str)).encode()).hexdigest()[:16]
    ckpt = args.out / "checkpoint.safetensors"
    params = {n: q for n, q in dot.named_parameters() if q.requires_grad}
    start, own, _ = load_training_state(ckpt, train_key, opt, params, gen, "delete it or use another --out")
    dot.load_state_dict({k[4:]: v for k, v in own.items() if k.startswith("dot/")}, strict=False)
    lr_at = lambda it: args.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * it / args.iters)).item())  # noqa: E731
    log = open(args.out / "loss.jsonl", "a" if start else "w")
    dot.train()
    t1 = time.perf_counter()
    bar = tqdm(range(start, args.iters), initial=start, total=args.iters, desc="train dot", unit="it")
    for it in bar:
        idx = torch.randint(len(pairs["target"]), (args.batch_size,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(it) * g["lr_mult"]
        loss = dot_loss(dot, {k: v[idx] for k, v in pairs.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        log.write(json.dumps({"iter": it, "loss": loss.item()}) + "\n")
        if it % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.5f}")
        if (it + 1) % args.checkpoint_every == 0 or it + 1 == args.iters:
            log.flush()
            save_training_state(ckpt, {f"dot/{k}": v for k, v in dot.trainable_state_dict().items()}, opt, params,
                                gen, it + 1, train_key)
    log.close()
    train_time = time.perf_counter() - t1
    dot.eval()
    err = residual_error(dot, held)
    times = {b: dash_dot_times(dash, dot, task.image_shape, int(b)) for b in args.latency_batches.split(",")}
    ratios = {b: round(dash_s / dot_s, 2) for b, (dash_s, dot_s) in times.items()}
    ms_per_image = {b: dict(dash=round(dash_s * 1e3 / int(b), 3), dot=round(dot_s * 1e3 / int(b), 3))
                    for b, (dash_s, dot_s) in times.items()}
    losses = [json.loads(line)["loss"] for line in open(args.out / "loss.jsonl")]
    curve = [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 6) for i in range(0, len(losses), 100)]
    card = dict(task=args.task, dot_config=vars(dot.config), dot_ratio_planned=args.dot_ratio,
                dot_ratio_measured=ratios, ms_per_image=ms_per_image, dots_per_dash=args.dots_per_dash,
                solver=args.solver,
                budgets=budgets, train_pairs=len(pairs["target"]), heldout_pairs=len(held["target"]),
                trainable_parameters=sum(q.numel() for q in trainable),
                dash_parameters=sum(q.numel() for q in dash.parameters()),
                heldout_error=err, pair_generation_s=round(pair_time, 1), train_time_s=round(train_time, 1),
                loss_per_100_iters=curve,
                command="python -m morse.train " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                    if v is not None and k not in ("out", "export", "data_dir", "latency_batches")))
    for path in [args.out / "dot.safetensors"] + ([args.export] if args.export else []):
        dot.save(path, {"card": json.dumps(card)})
        path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
        render(path.with_suffix(".json"))
    print(json.dumps({"heldout_error": err, "dot_ratio": ratios}, indent=1))


if __name__ == "__main__":
    main()
