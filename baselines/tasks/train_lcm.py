"""Consistency distillation of the embedded Fashion-MNIST Dash (the Latent Consistency Models recipe, in
pixel space, unconditional):

    python -m baselines.tasks.train_lcm --steps 6000 --batch-size 64 --lr 1e-4 --loss huber \
        --export baselines/weights/fmnist_lcm.safetensors

* teacher: the frozen Dash with one DDIM step (diffusers' DDIMScheduler, eta 0) from t_{n+k} to t_n on the
  grid of 1000/k trailing timesteps (k = --skip, 20 as in LCM: a 50-step grid), the grid LCMScheduler samples
  from with `original_inference_steps` = 1000/k;
* student: f(x, t) = c_skip(t) x + c_out(t) x0(x, t), initialised from the Dash, with x0 read from its
  epsilon; c_skip and c_out are LCMScheduler's (`get_scalings_for_boundary_condition_discrete`, timestep
  scaling 10), so f(x, 0) = x holds by construction and sampling uses the same f;
* target: f of an EMA of the student (decay 0.95, diffusers' EMAModel) at (teacher's x_{t_n}, t_n);
* loss: pseudo-Huber (c = 0.001, as in diffusers' LCM script) or L2 between the two.

diffusers ships the schedulers and the EMA but no consistency-distillation loop outside its example scripts,
so the loop is here (`Distiller`). Data: Fashion-MNIST train images noised to t_{n+k}.

Writes `<out>/fmnist_lcm.safetensors` (the EMA target's weights) with its model card (`distilled: true`, the
teacher's checksum, the recipe command, loss curve, wall time), and the same at `--export` when given; the
`lcm` method reads `baselines/weights/fmnist_lcm.safetensors`. Resumable: `<out>/checkpoint.safetensors`
(student, target, Adam moments, RNG, losses) is rewritten atomically every --checkpoint-every steps; rerun the
same command to resume.
"""

import argparse
import copy
import hashlib
import time
from pathlib import Path

import torch
from diffusers import LCMScheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from baselines.checkpoint import (
    load_training_state,
    model_and_ema_tensors,
    restore_model_and_ema,
    save_atomic,
    save_training_state,
    sha256,
)
from baselines.runtime import resolve_device, tune_malloc
from baselines.solvers import scheduler_class
from baselines.tasks.cards import write_card
from baselines.tasks.fmnist import FashionMNIST

LOSSES = ("huber", "l2")


class Distiller:
    """The consistency-distillation loss of one batch: student at t_{n+k} against the EMA target at t_n, where
    the teacher's DDIM step took the noised sample."""

    def __init__(self, schedule_config: dict, skip: int = 20, timestep_scaling: float = 10.0, loss: str = "huber",
                 huber_c: float = 1e-3):
        T = schedule_config["num_train_timesteps"]
        if skip < 1 or T % skip:
            raise ValueError(f"--skip must divide the {T} training timesteps (LCMScheduler's grid is k-1, 2k-1, ..., "
                             f"T-1), got {skip}")
        if loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.skip, self.loss_name, self.huber_c = skip, loss, huber_c
        cfg = {k: v for k, v in schedule_config.items() if k != "prediction_type"}
        self.lcm = LCMScheduler(**cfg, original_inference_steps=T // skip, timestep_scaling=timestep_scaling,
                                clip_sample=False, prediction_type="epsilon")
        # The project's DDIM (lands on the next grid entry); set_alpha_to_one=False makes the last step land on
        # alpha_bar(0), the noise level LCM's target sees at t = 0.
        self.ddim = scheduler_class("DDIMScheduler")(**cfg, timestep_spacing="trailing", set_alpha_to_one=False,
                                                     clip_sample=False, prediction_type="epsilon")
        self.ddim.set_timesteps(T // skip)
        self.grid = self.ddim.timesteps.flip(0)  # t_1 < ... < t_N, ascending
        lcm_grid = torch.arange(1, T // skip + 1) * skip - 1
        assert torch.equal(self.grid.cpu(), lcm_grid), "teacher grid differs from LCMScheduler's"
        self.alphas_cumprod = self.lcm.alphas_cumprod

    @property
    def grid_size(self) -> int:
        return len(self.grid)

    def consistency(self, net, x, t):
        """f(x, t) = c_skip(t) x + c_out(t) x0(x, t), the parameterisation LCMScheduler.step samples with."""
        ab = self.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
        x0 = (x - (1 - ab).sqrt() * net(x, t).sample) / ab.sqrt()
        c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(t.view(-1, 1, 1, 1).float())
        return c_skip * x + c_out * x0

    def teacher_step(self, teacher, x, t):
        """One DDIM step of the teacher from each sample's t to the grid entry below it. diffusers' step takes
        one timestep per call: the batch goes through it grouped by timestep."""
        eps = teacher(x, t).sample
        out = torch.empty_like(x)
        for tv in t.unique().tolist():
            rows = t == tv
            out[rows] = self.ddim.step(eps[rows], tv, x[rows]).prev_sample
        return out

    def distance(self, pred, target):
        if self.loss_name == "l2":
            return torch.nn.functional.mse_loss(pred, target)
        return (((pred - target) ** 2 + self.huber_c ** 2).sqrt() - self.huber_c).mean()

    def loss(self, student, teacher, target_net, x0, noise, index):
        """Loss of the batch x0 (noise, grid index n+k per sample); gradients reach only the student."""
        t_start = self.grid.to(x0.device)[index]
        t_end = (t_start - self.skip).clamp(min=0)  # below the grid's first entry: t = 0, where f(x, 0) = x
        x_start = self.lcm.add_noise(x0, noise, t_start)
        pred = self.consistency(student, x_start, t_start)
        with torch.no_grad():
            target = self.consistency(target_net, self.teacher_step(teacher, x_start, t_start), t_end)
        return self.distance(pred, target)


def make_ema(student, decay: float) -> EMAModel:
    # min_decay = decay: LCM's target follows the student at a fixed rate, without diffusers' EMA warm-up.
    return EMAModel(student.parameters(), decay=decay, min_decay=decay, use_ema_warmup=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50, help="linear learning-rate warm-up steps, then constant")
    p.add_argument("--loss", choices=LOSSES, default="huber")
    p.add_argument("--huber-c", type=float, default=1e-3)
    p.add_argument("--skip", type=int, default=20, help="teacher DDIM skip k on the 1000-step schedule")
    p.add_argument("--ema-decay", type=float, default=0.95, help="EMA rate of the target network")
    p.add_argument("--timestep-scaling", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="e.g. cuda; data and RNG stay on the CPU, so a run "
                   "draws the same batches on any device")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("runs/lcm-fmnist"))
    p.add_argument("--export", type=Path, default=None, help="also write the distilled model here with its card; "
                   f"the `lcm` method reads {FashionMNIST.lcm_path}")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        distiller = Distiller(FashionMNIST.schedule_config, args.skip, args.timestep_scaling, args.loss,
                              args.huber_c)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    tune_malloc()
    torch.manual_seed(args.seed)
    task = FashionMNIST(args.data_dir)
    images, _ = task.data("train")
    teacher = task.dash().to(device)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = copy.deepcopy(teacher)
    ema = make_ema(student, args.ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)

    command = (f"python -m baselines.tasks.train_lcm --steps {args.steps} --batch-size {args.batch_size} "
               f"--lr {args.lr} --warmup {args.warmup} --loss {args.loss} --huber-c {args.huber_c} --skip {args.skip} "
               f"--ema-decay {args.ema_decay} --timestep-scaling {args.timestep_scaling} --seed {args.seed}")
    teacher_sha = sha256(task.dash_path)
    key = hashlib.sha256((command + teacher_sha).encode()).hexdigest()[:16]
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint.safetensors"
    params = dict(student.named_parameters())
    start, own, meta = load_training_state(ckpt, key, opt, params, gen, "delete it or use another --out")
    losses, wall_before = [], 0.0
    if start:
        losses, wall_before = restore_model_and_ema(own, student, params, ema, start), float(meta["wall_s"])
        ema.copy_to(target.parameters())
        print(f"resuming from {ckpt} at step {start}")
    t0 = time.perf_counter()
    bar = tqdm(range(start, args.steps), desc="distil lcm", unit="step", initial=start, total=args.steps)
    for step in bar:
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        noise = torch.randn((args.batch_size, *images.shape[1:]), generator=gen)
        index = torch.randint(distiller.grid_size, (args.batch_size,), generator=gen)
        loss = distiller.loss(student, teacher, target, images[idx].to(device), noise.to(device), index.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        opt.step()
        ema.step(student.parameters())
        ema.copy_to(target.parameters())
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.5f}")
        if (step + 1) % args.checkpoint_every == 0 and step + 1 < args.steps:
            save_training_state(ckpt, model_and_ema_tensors(params, ema, losses), opt, params, gen, step + 1, key,
                                wall_s=wall_before + time.perf_counter() - t0)
    wall = wall_before + time.perf_counter() - t0

    curve = [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, len(losses), 100)]
    card = dict(model="diffusers.UNet2DModel (the Dash's architecture), consistency-distilled", distilled=True,
                weights="EMA target network", teacher=dict(path=str(task.dash_path.name), sha256=teacher_sha),
                scheduler=dict(name="LCMScheduler", original_inference_steps=distiller.grid_size,
                               timestep_scaling=args.timestep_scaling),
                schedule=task.schedule_config, data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]",
                command=command, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                loss=args.loss, huber_c=args.huber_c if args.loss == "huber" else None, skip=args.skip,
                teacher_solver="DDIM (eta 0), one step of k on the trailing grid", ema_decay=args.ema_decay,
                seed=args.seed, wall_time_s=round(wall, 1), device=str(device), threads=torch.get_num_threads(),
                loss_per_100_steps=[round(v, 6) for v in curve])
    paths = [args.out / "fmnist_lcm.safetensors"] + ([args.export] if args.export else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(target.state_dict(), path)
        write_card(path, card)
    ckpt.unlink(missing_ok=True)
    print(f"saved {' and '.join(map(str, paths))} after {wall / 60:.1f} min; final loss {curve[-1]:.5f}")


if __name__ == "__main__":
    main()
