"""Train the embedded Fashion-MNIST Dash (a small epsilon-prediction UNet2DModel).

    python -m baselines.tasks.train_dash --steps 2000 --batch-size 128 --lr 2e-3 --seed 0

Writes baselines/weights/fmnist_dash.safetensors (EMA weights) and its model card
fmnist_dash.json / fmnist_dash.md (config, data, steps, wall time, loss curve).

`--init W` continues from earlier weights W (the card records W's checksum and the card it came
with), so a longer schedule can be reached in stages that each fit a working session. Resumable:
`--work-dir` holds checkpoint.safetensors (weights, EMA, Adam moments, RNG, losses), rewritten
atomically every --checkpoint-every steps; rerun the same command to resume.

Under `torchrun --nproc-per-node K` (DDP, gloo on CPU, NCCL on CUDA) each rank takes 1/K of the same
global --batch-size drawn from the same RNG, so K processes train what one would (to rounding);
rank 0 writes checkpoints, weights and card.
"""

import argparse
import hashlib
import math
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from baselines.checkpoint import save_atomic
from baselines.distributed import World, ddp, session
from baselines.runtime import resolve_device, tune_malloc
from baselines.tasks.cards import lineage, write_card
from baselines.tasks.data import load_fmnist
from baselines.tasks.fmnist import DASH_CONFIG, SCHEDULE_CONFIG, WEIGHTS, build_dash
from baselines.tasks.trainer import loss_curve, train_loop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="after a 100-step warm-up: constant, or cosine decay to 5%% of --lr")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="start from these weights (safetensors) instead of random")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="e.g. cuda; data and RNG stay on the CPU, so a run "
                   "draws the same batches on any device")
    p.add_argument("--work-dir", type=Path, default=Path("runs/dash-fmnist"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=WEIGHTS / "fmnist_dash.safetensors")
    args = p.parse_args(argv)
    with session(args.device) as world:
        train(args, world)


def train(args, world: World) -> None:
    try:
        device = world.device(str(resolve_device(args.device)))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    world.check_batch(args.batch_size)
    tune_malloc()
    torch.manual_seed(args.seed)
    images, _ = load_fmnist("train", args.data_dir)
    model = build_dash().to(device).train()
    init = None
    if args.init is not None:
        if not args.init.exists():
            raise SystemExit(f"error: --init {args.init} not found")
        init = lineage(args.init)
        model.load_state_dict(load_file(args.init))
    net = ddp(model, world, device)
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    sched = DDPMScheduler(**SCHEDULE_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def lr_factor(s):
        if s < 100:
            return (s + 1) / 100
        if args.lr_schedule == "constant":
            return 1.0
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - 100) / max(1, args.steps - 100)))

    gen = torch.Generator().manual_seed(args.seed)
    command = (f"python -m baselines.tasks.train_dash --steps {args.steps} --batch-size {args.batch_size} "
               f"--lr {args.lr} --lr-schedule {args.lr_schedule} --ema-decay {args.ema_decay} --seed {args.seed}"
               + (f" --init {args.init}" if args.init else ""))
    key = hashlib.sha256((command + (init["sha256"] if init else "")).encode()).hexdigest()[:16]
    ckpt = args.work_dir / "checkpoint.safetensors"
    part = world.part(args.batch_size)  # every rank draws the whole global batch, so the RNG stays in step

    def loss_at(step):
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x0 = images[idx].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(SCHEDULE_CONFIG["num_train_timesteps"], (args.batch_size,), generator=gen).to(device)
        x0, noise, t = x0[part], noise[part], t[part]
        return torch.nn.functional.mse_loss(net(sched.add_noise(x0, noise, t), t).sample, noise)

    losses, wall = train_loop(model, ema, opt, gen, loss_at, steps=args.steps, lr=args.lr, lr_factor=lr_factor,
                              ckpt=ckpt, key=key, checkpoint_every=args.checkpoint_every, desc="train dash",
                              loss_value=world.mean, main=world.main)
    if not world.main:
        return

    ema.copy_to(model.parameters())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(model.state_dict(), args.out)
    curve = loss_curve(losses)
    card = dict(model="diffusers.UNet2DModel", config=DASH_CONFIG, schedule=SCHEDULE_CONFIG,
                parameters=sum(p.numel() for p in model.parameters()),
                data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]", command=command,
                steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                ema_decay=args.ema_decay, seed=args.seed, init=init, wall_time_s=round(wall, 1),
                device=str(device), ranks=world.size, threads=torch.get_num_threads(),
                loss_per_100_steps=[round(v, 5) for v in curve])
    write_card(args.out, card)
    ckpt.unlink(missing_ok=True)
    print(f"saved {args.out} after {wall / 60:.1f} min; final loss {curve[-1]:.4f}")


if __name__ == "__main__":
    main()
