"""Train the `fmnist-text` Dash: a UNet2DConditionModel on the small CLIP's text-token features, 10% of captions
dropped to the empty prompt (classifier-free guidance), started from the embedded unconditional Dash.

    python -m baselines.tasks.train_text_dash --steps 3000 --batch-size 64 --lr 5e-4 --seed 0

Each image gets a caption from a random training template and class name (`baselines.tasks.fmnist_clip`); the
frozen CLIP encodes every caption once. Writes baselines/weights/fmnist_text_dash.safetensors (EMA weights) and
its card. Resumable: --work-dir holds an atomic checkpoint every --checkpoint-every steps; rerun the same
command to resume.
"""

import argparse
import hashlib
import math
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from baselines.checkpoint import save_atomic, sha256
from baselines.runtime import resolve_device, tune_malloc
from baselines.tasks import fmnist_clip
from baselines.tasks.cards import lineage, write_card
from baselines.tasks.data import load_fmnist
from baselines.tasks.fmnist import SCHEDULE_CONFIG, FashionMNIST
from baselines.tasks.fmnist_text import TEXT_DASH_CONFIG, FashionMNISTText, build_text_dash, from_unconditional
from baselines.tasks.trainer import loss_curve, train_loop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--drop", type=float, default=0.1, help="fraction of captions replaced by the empty prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=FashionMNIST.dash_path,
                   help="the unconditional Dash to start from (from_unconditional), or a text Dash to continue")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=Path("runs/text-dash"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=FashionMNISTText.dash_path)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for path in (args.init, fmnist_clip.CLIP_PATH):
        if not path.exists():
            raise SystemExit(f"error: {path} not found (the CLIP: python -m baselines.tasks.train_clip)")
    tune_malloc()
    torch.manual_seed(args.seed)
    images, labels = load_fmnist("train", args.data_dir)
    clip, tokenizer = fmnist_clip.build(fmnist_clip.CLIP_PATH)
    table = fmnist_clip.captions()
    with torch.no_grad():  # row k: caption k of the table; the last row: the empty prompt
        feats = fmnist_clip.token_features(clip.eval(), tokenizer([c for c, _ in table] + [""])).to(device)
    per_class = len(table) // len(fmnist_clip.NAMES)

    model = build_text_dash()
    start_from = load_file(args.init)
    if set(start_from) == set(model.state_dict()):  # a text Dash already: continue from it
        model.load_state_dict(start_from)
        random_init = []
    else:
        random_init = from_unconditional(model, start_from)
    model = model.to(device).train()
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    sched = DDPMScheduler(**SCHEDULE_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def lr_factor(s):
        if s < 100:
            return (s + 1) / 100
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - 100) / max(1, args.steps - 100)))

    command = (f"python -m baselines.tasks.train_text_dash --steps {args.steps} --batch-size {args.batch_size} "
               f"--lr {args.lr} --ema-decay {args.ema_decay} --drop {args.drop} --seed {args.seed}"
               + (f" --init {args.init}" if args.init != FashionMNIST.dash_path else ""))
    init = {**lineage(args.init), "clip_sha256": sha256(fmnist_clip.CLIP_PATH)}
    key = hashlib.sha256((command + init["sha256"] + init["clip_sha256"]).encode()).hexdigest()[:16]
    gen = torch.Generator().manual_seed(args.seed)
    ckpt = args.work_dir / "checkpoint.safetensors"

    def loss_at(step):
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x0 = images[idx].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(SCHEDULE_CONFIG["num_train_timesteps"], (args.batch_size,), generator=gen).to(device)
        row = labels[idx] * per_class + torch.randint(per_class, (args.batch_size,), generator=gen)
        row = torch.where(torch.rand(args.batch_size, generator=gen) < args.drop, len(table), row)
        out = model(sched.add_noise(x0, noise, t), t, encoder_hidden_states=feats[row.to(device)]).sample
        return torch.nn.functional.mse_loss(out, noise)

    losses, wall = train_loop(model, ema, opt, gen, loss_at, steps=args.steps, lr=args.lr, lr_factor=lr_factor,
                              ckpt=ckpt, key=key, checkpoint_every=args.checkpoint_every, desc="train text dash")

    ema.copy_to(model.parameters())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(model.state_dict(), args.out)
    curve = loss_curve(losses)
    card = dict(model="diffusers.UNet2DConditionModel", config=TEXT_DASH_CONFIG, schedule=SCHEDULE_CONFIG,
                parameters=sum(p.numel() for p in model.parameters()),
                data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]; captions from "
                     f"{len(fmnist_clip.TRAIN_TEMPLATES)} training templates x 3 names per class, encoded by "
                     f"{fmnist_clip.CLIP_PATH.name} (per-token features after ln_final), {args.drop:.0%} dropped to "
                     "the empty prompt",
                init=init, not_from_init=f"{len(random_init)} tensors (cross-attention, LayerNorms, feed-forward)",
                command=command, steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine",
                ema_decay=args.ema_decay, drop=args.drop, seed=args.seed, wall_time_s=round(wall, 1),
                device=str(device), threads=torch.get_num_threads(), loss_per_100_steps=[round(v, 5) for v in curve])
    write_card(args.out, card)
    ckpt.unlink(missing_ok=True)
    print(f"saved {args.out} after {wall / 60:.1f} min; final loss {curve[-1]:.4f}")


if __name__ == "__main__":
    main()
