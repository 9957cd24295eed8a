"""Train the `fmnist-text` Dash: a UNet2DConditionModel on the small CLIP's text-token features, 10% of captions
dropped to the empty prompt (classifier-free guidance), started from the embedded unconditional Dash.

    python -m baselines.tasks.train_text_dash --steps 3000 --batch-size 64 --lr 5e-4 --seed 0

Each image gets a caption from a random training template and class name (`baselines.tasks.fmnist_clip`); the
frozen CLIP encodes every caption once. Writes baselines/weights/fmnist_text_dash.safetensors (EMA weights) and
its card. Resumable: --work-dir holds an atomic checkpoint every --checkpoint-every steps; rerun the same
command to resume.
"""

import argparse
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from baselines.checkpoint import sha256
from baselines.tasks import fmnist_clip
from baselines.tasks.data import load_fmnist
from baselines.tasks.fmnist import SCHEDULE_CONFIG, FashionMNIST
from baselines.tasks.fmnist_text import TEXT_DASH_CONFIG, FashionMNISTText, build_text_dash, from_unconditional
from baselines.training.cards import finish, lineage, loss_curve, run_fields
from baselines.training.loop import begin, train_loop, warm_ema
from baselines.training.recipe import TrainingError, command_text, device_of, flags_of, one_line_errors, resume_key
from baselines.training.schedule import warmup_cosine


def parser() -> argparse.ArgumentParser:
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
    return p


def recipe(args, init_sha256: str, clip_sha256: str) -> tuple[str, str]:
    """The command the card records (--init only when it is not the embedded Dash) and the run's resume key, which
    also holds the checksums of the --init weights and of the CLIP whose features the Dash learns from."""
    flags = flags_of(args, "steps", "batch_size", "lr", "ema_decay", "drop", "seed")
    command = command_text("baselines.tasks.train_text_dash",
                           {**flags, "init": None if args.init == FashionMNIST.dash_path else args.init})
    return command, resume_key(command, init_sha256, clip_sha256)


def caption_features(device) -> tuple[torch.Tensor, int, int]:
    """(the frozen CLIP's token features of every training caption and, last, of the empty prompt; captions per
    class; the empty prompt's row)."""
    clip, tokenizer = fmnist_clip.build(fmnist_clip.CLIP_PATH)
    table = fmnist_clip.captions()
    with torch.no_grad():  # row k: caption k of the table; the last row: the empty prompt
        feats = fmnist_clip.token_features(clip.eval(), tokenizer([c for c, _ in table] + [""])).to(device)
    return feats, len(table) // len(fmnist_clip.NAMES), len(table)


def start_model(init: Path) -> tuple[torch.nn.Module, list[str]]:
    """The text Dash from `init`: a text Dash continues as it is; the unconditional Dash gives every tensor the
    two share (`from_unconditional`, which returns the names of the others, left at their initialisation)."""
    model = build_text_dash()
    start_from = load_file(init)
    if set(start_from) == set(model.state_dict()):  # a text Dash already: continue from it
        model.load_state_dict(start_from)
        return model, []
    return model, from_unconditional(model, start_from)


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        train(args)


def train(args) -> None:
    device = device_of(args.device)
    for path in (args.init, fmnist_clip.CLIP_PATH):
        if not path.exists():
            raise TrainingError(f"{path} not found (the CLIP: python -m baselines.tasks.train_clip)")
    gen = begin(args.seed)
    images, labels = load_fmnist("train", args.data_dir)
    feats, per_class, empty = caption_features(device)
    model, random_init = start_model(args.init)
    model = model.to(device).train()
    ema = warm_ema(model, args.ema_decay)
    sched = DDPMScheduler(**SCHEDULE_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    init = {**lineage(args.init), "clip_sha256": sha256(fmnist_clip.CLIP_PATH)}
    command, key = recipe(args, init["sha256"], init["clip_sha256"])
    ckpt = args.work_dir / "checkpoint.safetensors"

    def loss_at(step):
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x0 = images[idx].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(SCHEDULE_CONFIG["num_train_timesteps"], (args.batch_size,), generator=gen).to(device)
        row = labels[idx] * per_class + torch.randint(per_class, (args.batch_size,), generator=gen)
        row = torch.where(torch.rand(args.batch_size, generator=gen) < args.drop, empty, row)
        out = model(sched.add_noise(x0, noise, t), t, encoder_hidden_states=feats[row.to(device)]).sample
        return torch.nn.functional.mse_loss(out, noise)

    losses, wall = train_loop(model, ema, opt, gen, loss_at, steps=args.steps, lr=args.lr,
                              lr_factor=warmup_cosine(args.steps, floor=0.05), ckpt=ckpt, key=key,
                              checkpoint_every=args.checkpoint_every, desc="train text dash")
    ema.copy_to(model.parameters())
    card = dict(model="diffusers.UNet2DConditionModel", config=TEXT_DASH_CONFIG, schedule=SCHEDULE_CONFIG,
                parameters=sum(p.numel() for p in model.parameters()),
                data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]; captions from "
                     f"{len(fmnist_clip.TRAIN_TEMPLATES)} training templates x 3 names per class, encoded by "
                     f"{fmnist_clip.CLIP_PATH.name} (per-token features after ln_final), {args.drop:.0%} dropped to "
                     "the empty prompt",
                init=init, not_from_init=f"{len(random_init)} tensors (cross-attention, LayerNorms, feed-forward)",
                command=command, steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine",
                ema_decay=args.ema_decay, drop=args.drop, seed=args.seed, **run_fields(wall, device, losses))
    finish([args.out], model.state_dict(), card, ckpt, wall, f"final loss {loss_curve(losses)[-1]:.4f}")


if __name__ == "__main__":
    main()
