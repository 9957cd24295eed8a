"""Train the small CLIP of `fmnist-text` on Fashion-MNIST image-caption pairs (open_clip's model and ClipLoss).

    python -m baselines.tasks.train_clip --steps 2000 --batch-size 256 --lr 2e-3 --seed 0

Each step draws images, shifts each by up to 2 pixels, and captions each with a random training template and
class name (`baselines.tasks.fmnist_clip`). Writes baselines/weights/fmnist_clip.safetensors (EMA weights) with
its card, which records the zero-shot accuracy on the 10,000 test images with the held-out templates.
Resumable: --work-dir holds an atomic checkpoint every --checkpoint-every steps; rerun the same command.
"""

import argparse
import math
from pathlib import Path

import torch
from open_clip.loss import ClipLoss

from baselines.tasks import fmnist_clip
from baselines.tasks.data import load_fmnist
from baselines.training.cards import finish, run_fields
from baselines.training.loop import begin, train_loop, warm_ema
from baselines.training.recipe import command_text, device_of, flags_of, one_line_errors, resume_key
from baselines.training.schedule import warmup_cosine


def shift(images: torch.Tensor, gen: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image moved by up to `pixels` in x and y, the border filled with background (-1)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pixels,) * 4, value=-1.0)
    dx, dy = (torch.randint(2 * pixels + 1, (n,), generator=gen) for _ in range(2))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=Path("runs/clip-fmnist"))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=fmnist_clip.CLIP_PATH)
    return p


def recipe(args) -> tuple[str, str]:
    """The command the card records and the run's resume key, which also holds the BPE merges (the tokens)."""
    command = command_text("baselines.tasks.train_clip",
                           flags_of(args, "steps", "batch_size", "lr", "weight_decay", "ema_decay", "seed"))
    return command, resume_key(command, fmnist_clip.BPE_PATH.read_bytes().hex())


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        train(args)


def train(args) -> None:
    device = device_of(args.device)
    gen = begin(args.seed)
    images, labels = load_fmnist("train", args.data_dir)
    model, tokenizer = fmnist_clip.build()
    model = model.to(device).train()
    # Every training caption tokenised once: (class, name, template) -> row.
    table = fmnist_clip.captions()
    tokens = tokenizer([c for c, _ in table])
    per_class = len(table) // len(fmnist_clip.NAMES)
    ema = warm_ema(model, args.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = ClipLoss()
    command, key = recipe(args)
    ckpt = args.work_dir / "checkpoint.safetensors"

    def loss_at(step):
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x = fmnist_clip.normalize(shift(images[idx], gen)).to(device)
        row = labels[idx] * per_class + torch.randint(per_class, (args.batch_size,), generator=gen)
        img, txt = model.encode_image(x, normalize=True), model.encode_text(tokens[row].to(device), normalize=True)
        return loss_fn(img, txt, model.logit_scale.exp())

    @torch.no_grad()
    def clamp_temperature():  # CLIP's clamp: a temperature below 1/100 makes the loss unstable
        model.logit_scale.clamp_(0, math.log(100))

    losses, wall = train_loop(model, ema, opt, gen, loss_at, steps=args.steps, lr=args.lr,
                              lr_factor=warmup_cosine(args.steps), ckpt=ckpt, key=key,
                              checkpoint_every=args.checkpoint_every, desc="train clip", after_step=clamp_temperature)
    ema.copy_to(model.parameters())
    model = model.cpu().eval()
    test_x, test_y = load_fmnist("test", args.data_dir)
    acc = {name: fmnist_clip.zero_shot_accuracy(model, tokenizer, test_x, test_y, templates)
           for name, templates in (("heldout", fmnist_clip.HELDOUT_TEMPLATES), ("train", fmnist_clip.TRAIN_TEMPLATES))}
    finish([args.out], model.state_dict(), card_of(args, model, command, acc, wall, device, losses), ckpt, wall,
           f"zero-shot test accuracy {acc['heldout']:.4f} (held-out templates), {acc['train']:.4f} (training "
           "templates)")


def card_of(args, model, command: str, acc: dict, wall: float, device, losses: list[float]) -> dict:
    card = dict(model=f"open_clip CLIP ({fmnist_clip.CLIP_NAME})", config=fmnist_clip.model_config(),
                tokenizer=f"open_clip SimpleTokenizer, merges {fmnist_clip.BPE_PATH.name} (fmnist_clip.write_bpe)",
                parameters=sum(p.numel() for p in model.parameters()),
                data="Fashion-MNIST train (60k), padded to 32x32, shifted by up to 2 px; captions from "
                     f"{len(fmnist_clip.TRAIN_TEMPLATES)} training templates x 3 names per class",
                heldout_templates=list(fmnist_clip.HELDOUT_TEMPLATES), command=command, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, ema_decay=args.ema_decay,
                seed=args.seed, zero_shot_test_accuracy_heldout_templates=round(acc["heldout"], 4),
                zero_shot_test_accuracy_train_templates=round(acc["train"], 4),
                logit_scale=round(model.logit_scale.exp().item(), 2), **run_fields(wall, device, losses, digits=4))
    card["config"]["text_cfg"]["tokenizer_kwargs"] = {"bpe_path": fmnist_clip.BPE_PATH.name}
    return card


if __name__ == "__main__":
    main()
