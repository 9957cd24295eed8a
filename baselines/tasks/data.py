"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (idx files, no download)."""

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class MissingDataError(FileNotFoundError):
    pass


def data_dir(override: str | os.PathLike | None = None) -> Path:
    return Path(override or os.environ.get("MORSE_BENCH_FMNIST_DIR") or DEFAULT_DIR)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fmnist(split: str = "train", root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images padded to 32x32 in [-1, 1] (N, 1, 32, 32) float32, and labels (N,) int64."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = data_dir(root)
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists() or not lbl_path.exists():
        raise MissingDataError(
            f"Fashion-MNIST not found in {root}: run `apt-get install dataset-fashion-mnist` "
            "or pass --data-dir DIR holding the *-ubyte.gz files")
    images = torch.from_numpy(_read_idx(img_path).copy()).float().div_(127.5).sub_(1.0)
    images = torch.nn.functional.pad(images[:, None], (2, 2, 2, 2), value=-1.0)
    labels = torch.from_numpy(_read_idx(lbl_path).astype(np.int64))
    return images, labels
