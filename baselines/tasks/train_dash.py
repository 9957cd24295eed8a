"""Train the embedded Fashion-MNIST Dash (a small epsilon-prediction UNet2DModel).

    python -m baselines.tasks.train_dash --steps 2400 --batch-size 128 --seed 0

Writes baselines/weights/fmnist_dash.safetensors (EMA weights) and its model card
fmnist_dash.json / fmnist_dash.md (config, data, steps, wall time, loss curve).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import save_file
from tqdm import tqdm

from baselines.runtime import tune_malloc
from baselines.tasks.cards import render
from baselines.tasks.data import load_fmnist
from baselines.tasks.fmnist import DASH_CONFIG, SCHEDULE_CONFIG, WEIGHTS, build_dash


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=WEIGHTS / "fmnist_dash.safetensors")
    args = p.parse_args(argv)

    tune_malloc()
    torch.manual_seed(args.seed)
    images, _ = load_fmnist("train", args.data_dir)
    model = build_dash().train()
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    sched = DDPMScheduler(**SCHEDULE_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    gen = torch.Generator().manual_seed(args.seed)

    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(args.steps), desc="train dash", unit="step")
    for step in bar:
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(SCHEDULE_CONFIG["num_train_timesteps"], (args.batch_size,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warmup.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    wall = time.perf_counter() - t0

    ema.copy_to(model.parameters())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(state, tmp)
    tmp.replace(args.out)
    curve = [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, len(losses), 100)]
    card = dict(model="diffusers.UNet2DModel", config=DASH_CONFIG, schedule=SCHEDULE_CONFIG,
                parameters=sum(p.numel() for p in model.parameters()),
                data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]",
                command=f"python -m baselines.tasks.train_dash --steps {args.steps} --batch-size "
                        f"{args.batch_size} --lr {args.lr} --ema-decay {args.ema_decay} --seed {args.seed}",
                steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                seed=args.seed, wall_time_s=round(wall, 1), threads=torch.get_num_threads(),
                loss_per_100_steps=[round(v, 5) for v in curve])
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    render(args.out.with_suffix(".json"))
    print(f"saved {args.out} after {wall / 60:.1f} min; final loss {curve[-1]:.4f}")


if __name__ == "__main__":
    main()
