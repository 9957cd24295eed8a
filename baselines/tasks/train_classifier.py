"""Train the Fashion-MNIST classifier whose penultimate features define FD-fmnist.

    python -m baselines.tasks.train_classifier --epochs 3 --seed 0

Writes baselines/weights/fmnist_classifier.safetensors and fmnist_classifier.json.
"""

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from baselines.tasks.data import load_fmnist
from baselines.tasks.fmnist import WEIGHTS, Classifier
from baselines.training.cards import finish
from baselines.training.loop import begin
from baselines.training.recipe import command_text, flags_of, one_line_errors


@torch.no_grad()
def accuracy(model, images, labels, batch_size=500) -> float:
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=WEIGHTS / "fmnist_classifier.safetensors")
    return p


def recipe(args) -> str:
    """The command the card records (a run of minutes: no checkpoint, so no resume key)."""
    return command_text("baselines.tasks.train_classifier", flags_of(args, "epochs", "batch_size", "lr", "seed"))


def fit(model, x, y, args, gen: torch.Generator) -> None:
    """Epochs of shuffled batches, half of them flipped left-right, under a one-cycle learning rate. (Minutes on
    2 cores, so not the resumable loop: no checkpoint, and its recipe predates the loop's gradient clipping.)"""
    steps = args.epochs * (len(x) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    bar = tqdm(total=steps, desc="train classifier", unit="step")
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // args.batch_size):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        gen = begin(args.seed)
        x, y = load_fmnist("train", args.data_dir)
        xt, yt = load_fmnist("test", args.data_dir)
        model = Classifier()
        t0 = time.perf_counter()
        fit(model, x, y, args, gen)
        wall = time.perf_counter() - t0
        acc = accuracy(model, xt, yt)
        card = dict(model="baselines.tasks.fmnist.Classifier", feature_dim=Classifier.feature_dim,
                    data="Fashion-MNIST train (60k) with horizontal flips; accuracy on the 10k test split",
                    command=recipe(args), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    test_accuracy=round(acc, 4), wall_time_s=round(wall, 1))
        finish([args.out], model.state_dict(), card, None, wall, f"test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
