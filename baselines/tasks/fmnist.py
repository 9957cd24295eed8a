"""The embedded default task: Fashion-MNIST 32x32, a small Dash UNet, a domain classifier."""

import json
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file
from torch import nn

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


class MissingWeightsError(FileNotFoundError):
    pass


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
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)


class FashionMNIST:
    name = "fmnist"
    image_shape = (1, 32, 32)
    classes = CLASSES
    schedule_config = SCHEDULE_CONFIG

    dash_path = WEIGHTS / "fmnist_dash.safetensors"
    classifier_path = WEIGHTS / "fmnist_classifier.safetensors"

    def __init__(self, data_dir=None):
        self.data_dir = data_dir

    def data(self, split: str = "train"):
        return load_fmnist(split, self.data_dir)

    def dash(self) -> UNet2DModel:
        return _load(build_dash(), self.dash_path.name)

    def classifier(self) -> Classifier:
        return _load(Classifier(), self.classifier_path.name)

    def card(self, name: str) -> dict:
        return json.loads((WEIGHTS / f"{name}.json").read_text())
