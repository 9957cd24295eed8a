"""The resumable training loop the suite's trainers share (Dash, text Dash, CLIP, LCM distillation).

A trainer builds its model, its diffusers EMAModel and its optimiser, and hands over `loss_at(step)`, which draws
the step's batch from the run's generator and returns the loss. The loop owns what must be the same everywhere
for a killed run to resume bit-identically: the optimiser step with gradient clipping and the learning-rate
factor, the EMA update, and the atomic checkpoint of weights, EMA, Adam moments, RNG and loss history every
`checkpoint_every` steps (baselines.checkpoint), keyed by the run's arguments so that a checkpoint of another
recipe is refused. A finished run deletes its checkpoint after the trainer has written the weights.
"""

import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from baselines.checkpoint import (
    emas_by_prefix,
    load_training_state,
    model_and_ema_tensors,
    restore_model_and_ema,
    save_training_state,
)


def train_loop(model: torch.nn.Module, ema, opt, gen: torch.Generator, loss_at: Callable[[int], torch.Tensor], *,
               steps: int, lr: float, lr_factor: Callable[[int], float], ckpt: Path, key: str, checkpoint_every: int,
               desc: str, hint: str = "delete it or use another --work-dir",
               after_step: Callable[[], None] | None = None,
               loss_value: Callable[[torch.Tensor], float] = lambda loss: loss.item(),
               main: bool = True) -> tuple[list[float], float]:
    """Train `model` to `steps`, resuming from `ckpt` when it holds this run (`key`); returns the loss history and
    the wall time in seconds over all sessions of the run.

    `ema` is a diffusers EMAModel, or a dict of them by checkpoint prefix (LCM keeps its target and the slower
    EMA it exports). `after_step` runs after each optimiser step, before the EMA update (CLIP clamps its
    temperature there);
    `loss_value` turns the loss into the number logged (the mean over ranks for a distributed run); only `main`
    shows progress and writes checkpoints."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    start, own, meta = load_training_state(ckpt, key, opt, params, gen, hint)
    if start > steps:  # a trainer whose key leaves the step count out can be asked to stop short of its checkpoint
        raise SystemExit(f"error: {ckpt} holds step {start}, past the {steps} steps asked for: ask for {start} or more")
    losses, wall_before = [], 0.0
    if start:
        losses, wall_before = restore_model_and_ema(own, model, params, ema, start), float(meta["wall_s"])
        print(f"resuming from {ckpt} at step {start}")
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), desc=desc, unit="step", initial=start, total=steps, disable=not main)
    for step in bar:
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step)
        opt.step()
        if after_step is not None:
            after_step()
        for one in emas_by_prefix(ema).values():
            one.step(model.parameters())
        losses.append(loss_value(loss))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.5f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps and main:
            save_training_state(ckpt, model_and_ema_tensors(params, ema, losses), opt, params, gen, step + 1, key,
                                wall_s=wall_before + time.perf_counter() - t0)
    return losses, wall_before + time.perf_counter() - t0


def loss_curve(losses: list[float], every: int = 100) -> list[float]:
    """The mean loss of each run of `every` steps, as the model cards record it."""
    return [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)]
