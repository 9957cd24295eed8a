"""The embedded default task: Fashion-MNIST 32x32, a small Dash UNet, a domain classifier.

Its primary metric is FD-fmnist, the Frechet distance of the classifier's 128-d penultimate features
against the Fashion-MNIST train set (fast enough for CPU sweeps); Inception FID is available on request
(--fid-samples K) against the first --fid-reference train images.
"""

import json
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file
from torch import nn

from baselines.checkpoint import sha256, verify_weights
from baselines.tasks.base import MissingWeightsError, Task
from baselines.tasks.data import CLASSES, load_fmnist

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

DASH_CONFIG = dict(
    sample_size=32, in_channels=1, out_channels=1, layers_per_block=1,
    block_out_channels=(32, 64, 64), norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
# The DDPM paper's linear schedule; every sampler of the task reads its alphas from here.
SCHEDULE_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                       beta_schedule="linear", prediction_type="epsilon")


def build_dash() -> UNet2DModel:
    return UNet2DModel(**DASH_CONFIG)


class Classifier(nn.Module):
    """Small CNN whose 128-d penultimate features give the domain Frechet distance FD-fmnist."""

    feature_dim = 128

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 16), block(16, 32), block(32, 64),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(64, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, len(CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _load(model: nn.Module, name: str) -> nn.Module:
    path = WEIGHTS / name
    if not path.exists():
        raise MissingWeightsError(f"weights {path} missing: restore them with `git checkout -- {path.name}` "
                                  f"or retrain (see {path.with_suffix('.md').name})")
    verify_weights(path)
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)


class FashionMNIST(Task):
    name = "fmnist"
    image_shape = (1, 32, 32)
    classes = CLASSES
    schedule_config = SCHEDULE_CONFIG
    metrics = ("fd_fmnist", "fid", "kid_fmnist")
    primary_metric = "fd_fmnist"
    metric_labels = {"fd_fmnist": "FD (Fashion-MNIST classifier features)"}  # axis and table names in reports
    default_fid_samples = 0  # Inception FID costs ~0.2-1 s per image on a CPU: only on request
    # FD-fmnist: DDIM at 2 steps (FD 84) draws blurred silhouettes and noise, at 4 steps (FD 13) recognisable
    # garments; 50 sits between, about 100x the quality floor of real held-out images (0.35-0.49).
    meaningful_max = 50.0

    dash_path = WEIGHTS / "fmnist_dash.safetensors"
    classifier_path = WEIGHTS / "fmnist_classifier.safetensors"
    lcm_path = WEIGHTS / "fmnist_lcm.safetensors"  # the Dash consistency-distilled (baselines.tasks.train_lcm)

    def __init__(self, data_dir=None, weights=None, random_weights: bool = False, reference=None):
        if weights is not None:
            raise ValueError("task fmnist uses its committed weights; --weights is for the pretrained tasks")
        super().__init__(None, random_weights, reference, data_dir)

    def data(self, split: str = "train"):
        return load_fmnist(split, self.data_dir)

    def dash(self) -> UNet2DModel:
        if self.random_weights:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                return build_dash().eval().requires_grad_(False)
        return _load(build_dash(), self.dash_path.name)

    def checksum(self) -> str:
        return "random" if self.random_weights else sha256(WEIGHTS / self.dash_path.name)[:16]

    def classifier(self) -> Classifier:
        return _load(Classifier(), self.classifier_path.name)

    def card(self, name: str) -> dict:
        return json.loads((WEIGHTS / f"{name}.json").read_text())
