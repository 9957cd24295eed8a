"""The resumable training loop the suite's trainers share (Dash, text Dash, CLIP, LCM distillation, the Dot).

A trainer builds its model, its optimiser (and a diffusers EMAModel where it keeps one) and hands over
`loss_at(step)`, which draws the step's batch from the run's generator and returns the loss. The loop owns what
must be the same everywhere for a killed run to resume bit-identically: the optimiser step with gradient clipping
and the learning-rate factor, the EMA update, and the atomic checkpoint of the run's tensors, Adam moments, RNG
and step every `checkpoint_every` steps (baselines.checkpoint), keyed by the run's arguments
(`recipe.resume_key`) so that a checkpoint of another recipe is refused. A finished run deletes its checkpoint
after the trainer has written the weights (`cards.finish`).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from baselines.checkpoint import (
    CheckpointMismatchError,
    emas_by_prefix,
    load_training_state,
    model_and_ema_tensors,
    restore_model_and_ema,
    save_training_state,
)
from baselines.runtime import tune_malloc


def begin(seed: int) -> torch.Generator:
    """Seed torch (the model's initialisation) and return the run's own data generator, which the checkpoint
    saves and restores; glibc's allocator is tuned first (baselines.runtime.tune_malloc)."""
    tune_malloc()
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def warm_ema(model: torch.nn.Module, decay: float) -> EMAModel:
    """diffusers' EMAModel with its warm-up (power 3/4), as the Dash, the text Dash and the CLIP keep."""
    return EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, power=3 / 4)


@dataclass
class Checkpoint:
    """A run's checkpoint file, written for `key` (another key is refused with `hint`: what to delete or
    change); it holds the optimiser's moments by the names of `params` and the state of `gen`."""

    path: Path
    key: str
    opt: torch.optim.Optimizer
    params: dict
    gen: torch.Generator
    hint: str = "delete it or use another --work-dir"

    def load(self) -> tuple[int, dict, dict]:
        """(step, the run's own tensors, metadata), the optimiser and RNG restored; step 0 without a checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return load_training_state(self.path, self.key, self.opt, self.params, self.gen, self.hint)

    def save(self, tensors: dict, step: int, **meta) -> None:
        save_training_state(self.path, tensors, self.opt, self.params, self.gen, step, self.key, **meta)


@dataclass
class Stepper:
    """One optimiser step as every trainer takes it: backward, gradients clipped to norm 1, the rate
    `lr * lr_factor(step)` (times a parameter group's `lr_mult`, where it has one), the step, then `after_step`
    (CLIP clamps its temperature there; EMAs are updated there)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    lr: float
    lr_factor: Callable[[int], float]
    after_step: Callable[[], None] | None = None

    def __call__(self, loss: torch.Tensor, step: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self.lr * self.lr_factor(step) * group.get("lr_mult", 1.0)
        self.opt.step()
        if self.after_step is not None:
            self.after_step()


def run_steps(stepper: Stepper, loss_at: Callable[[int], torch.Tensor], first: int, end: int, *,
              log: Callable[[int, float], None], save: Callable[[int], None] | None, every: int,
              save_at_end: bool = False, loss_value: Callable[[torch.Tensor], float] = lambda loss: loss.item(),
              total: int | None = None, desc: str = "train", unit: str = "step") -> None:
    """Steps `first` .. `end` - 1: each step's loss goes to `log(step, value)` (`loss_value`: the mean over ranks
    for a distributed run); `save(step)` checkpoints after every `every`-th step before `end`, and at `end` with
    `save_at_end` (None: this rank writes no checkpoints and shows no progress). The bar counts to `total`."""
    recent = []
    bar = tqdm(range(first, end), desc=desc, unit=unit, initial=first, total=total or end, disable=save is None)
    for step in bar:
        loss = loss_at(step)
        stepper(loss, step)
        value = loss_value(loss)
        log(step, value)
        recent = recent[-19:] + [value]
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.5f}")
        done = step + 1
        if save is not None and (done % every == 0 and done < end or save_at_end and done == end):
            save(done)
    bar.close()


def train_loop(model: torch.nn.Module, ema, opt, gen: torch.Generator, loss_at: Callable[[int], torch.Tensor], *,
               steps: int, lr: float, lr_factor: Callable[[int], float], ckpt: Path, key: str, checkpoint_every: int,
               desc: str, hint: str = "delete it or use another --work-dir",
               after_step: Callable[[], None] | None = None,
               loss_value: Callable[[torch.Tensor], float] = lambda loss: loss.item(),
               main: bool = True) -> tuple[list[float], float]:
    """Train `model` to `steps`, resuming from `ckpt` when it holds this run (`key`); returns the loss history and
    the wall time in seconds over all sessions of the run. The checkpoint holds the weights, the EMAs and the loss
    history (`checkpoint.model_and_ema_tensors`).

    `ema` is a diffusers EMAModel, or a dict of them by checkpoint prefix (LCM keeps its target and the slower
    EMA it exports); they are updated after `after_step`. Only `main` shows progress and writes checkpoints."""
    params = dict(model.named_parameters())
    state = Checkpoint(ckpt, key, opt, params, gen, hint)
    start, own, meta = state.load()
    if start > steps:  # a trainer whose key leaves the step count out can be asked to stop short of its checkpoint
        raise CheckpointMismatchError(f"{ckpt} holds step {start}, past the {steps} steps asked for: ask for "
                                      f"{start} or more")
    losses, wall_before = [], 0.0
    if start:
        losses, wall_before = restore_model_and_ema(own, model, params, ema, start), float(meta["wall_s"])
        print(f"resuming from {ckpt} at step {start}")
    t0 = time.perf_counter()

    def update_emas():
        if after_step is not None:
            after_step()
        for one in emas_by_prefix(ema).values():
            one.step(model.parameters())

    def save(step):
        state.save(model_and_ema_tensors(params, ema, losses), step, wall_s=wall_before + time.perf_counter() - t0)

    run_steps(Stepper(model, opt, lr, lr_factor, update_emas), loss_at, start, steps,
              log=lambda step, value: losses.append(value), save=save if main else None, every=checkpoint_every,
              loss_value=loss_value, desc=desc)
    return losses, wall_before + time.perf_counter() - t0
