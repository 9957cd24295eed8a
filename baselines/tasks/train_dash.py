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
import math
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from baselines.distributed import World, ddp, session
from baselines.tasks.data import load_fmnist
from baselines.tasks.fmnist import DASH_CONFIG, SCHEDULE_CONFIG, WEIGHTS
from baselines.training.cards import finish, lineage, loss_curve, run_fields
from baselines.training.loop import begin, train_loop, warm_ema
from baselines.training.recipe import TrainingError, command_text, device_of, flags_of, one_line_errors, resume_key
from baselines.training.schedule import warmup_constant, warmup_cosine


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="after a 100-step warm-up: constant, or cosine decay to 5%% of --lr")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="start from these weights (safetensors) instead of random")
    p.add_argument("--channels", default=None, help="block widths of a smaller (or larger) Dash, e.g. 8,16,32 for "
                   "T-Stitch's small denoiser; the Dash's layout otherwise")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="e.g. cuda; data and RNG stay on the CPU, so a run "
                   "draws the same batches on any device")
    p.add_argument("--work-dir", type=Path, default=Path("runs/dash-fmnist"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=WEIGHTS / "fmnist_dash.safetensors")
    return p


def recipe(args, init_sha256: str = "") -> tuple[str, str]:
    """The command the card records and the run's resume key, which also holds the checksum of the --init
    weights."""
    command = command_text("baselines.tasks.train_dash", flags_of(
        args, "steps", "batch_size", "lr", "lr_schedule", "ema_decay", "seed", "init", "channels"))
    return command, resume_key(command, init_sha256)


def dash_config(channels: str | None) -> dict:
    """The Dash's layout, with other block widths where --channels gives them (group norm over gcd(8, widths)
    groups, so that every width divides)."""
    if channels is None:
        return DASH_CONFIG
    try:
        widths = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise TrainingError(f"--channels takes comma-separated integers, got {channels!r}") from None
    if len(widths) != len(DASH_CONFIG["block_out_channels"]) or min(widths) < 1:
        raise TrainingError(f"--channels needs {len(DASH_CONFIG['block_out_channels'])} positive widths, "
                            f"got {channels!r}")
    return dict(DASH_CONFIG, block_out_channels=widths, norm_num_groups=math.gcd(8, *widths))


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        if args.channels and args.out == parser().get_default("out"):
            raise TrainingError("--channels trains another model: give it its own --out (and --work-dir)")
        with session(args.device) as world:
            train(args, world)


def train(args, world: World) -> None:
    device = world.device(str(device_of(args.device)))
    world.check_batch(args.batch_size)
    gen = begin(args.seed)
    images, _ = load_fmnist("train", args.data_dir)
    config = dash_config(args.channels)
    model = UNet2DModel(**config).to(device).train()
    init = None
    if args.init is not None:
        if not args.init.exists():
            raise TrainingError(f"--init {args.init} not found")
        init = lineage(args.init)
        model.load_state_dict(load_file(args.init))
    net = ddp(model, world, device)
    ema = warm_ema(model, args.ema_decay)
    sched = DDPMScheduler(**SCHEDULE_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    command, key = recipe(args, init["sha256"] if init else "")
    ckpt = args.work_dir / "checkpoint.safetensors"
    part = world.part(args.batch_size)  # every rank draws the whole global batch, so the RNG stays in step

    def loss_at(step):
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x0 = images[idx].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(SCHEDULE_CONFIG["num_train_timesteps"], (args.batch_size,), generator=gen).to(device)
        x0, noise, t = x0[part], noise[part], t[part]
        return torch.nn.functional.mse_loss(net(sched.add_noise(x0, noise, t), t).sample, noise)

    lr_factor = warmup_cosine(args.steps, floor=0.05) if args.lr_schedule == "cosine" else warmup_constant(100)
    losses, wall = train_loop(model, ema, opt, gen, loss_at, steps=args.steps, lr=args.lr, lr_factor=lr_factor,
                              ckpt=ckpt, key=key, checkpoint_every=args.checkpoint_every, desc="train dash",
                              loss_value=world.mean, main=world.main)
    if not world.main:
        return
    ema.copy_to(model.parameters())
    card = dict(model="diffusers.UNet2DModel", config=config, schedule=SCHEDULE_CONFIG,
                parameters=sum(p.numel() for p in model.parameters()),
                data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]", command=command,
                steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                ema_decay=args.ema_decay, seed=args.seed, init=init, ranks=world.size,
                **run_fields(wall, device, losses))
    finish([args.out], model.state_dict(), card, ckpt, wall, f"final loss {loss_curve(losses)[-1]:.4f}")


if __name__ == "__main__":
    main()
