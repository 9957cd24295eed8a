"""Pixel-space tasks whose Dash is a pretrained diffusers `UNet2DModel` (the DDPM checkpoints of Ho et al.,
2020, on which the Morse paper runs DDIM), loaded with `from_pretrained`.

Where the weights come from: `--weights DIR` (a folder as `hf download REPO --local-dir DIR` leaves it), else
the Hugging Face cache (downloaded there unless HF_HUB_OFFLINE=1). Absent weights end in one line naming the
download command. A folder is checked before it is trusted: its config must describe the task's network
(block types, channels in and out; widths, depth and resolution may differ, which lets tests use tiny
versions, and `image_shape` follows the loaded network), and every tensor must load with its shape; a
truncated file or another network's folder is refused in one line.

`random_weights=True` builds the real network from the config shipped in `configs/` (the checkpoint's
config.json and scheduler_config.json): latency does not depend on weight values, so latency-only runs
need no download.

Quality is FID: TF-FID Inception behind clean-fid's "clean" resize, against reference statistics given
with --reference (a .npz of mu/sigma as clean-fid and pytorch-fid write them, or an image folder). The
usual protocol, which the tasks' default --fid-samples follows, is 50,000 samples against the statistics
of the whole training set; fewer samples bias FID upward (compare only FIDs with the same count).
"""

import hashlib
import json
import warnings
from pathlib import Path

import torch
from diffusers import UNet2DModel

from baselines.checkpoint import CorruptWeightsError, sha256
from baselines.tasks.base import MissingReferenceError, MissingWeightsError, ReferenceSource, Task
from baselines.tasks.data import MissingDataError
from baselines.tasks.hub import CONFIGS, HubWeights, first_line

# What makes a folder "this task's network"; widths and norm settings may differ.
ARCHITECTURE_KEYS = ("_class_name", "in_channels", "out_channels", "down_block_types", "up_block_types",
                     "time_embedding_type")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # diffusers' preference


def scheduler_kwargs(config_dir: str) -> dict:
    """The checkpoint's scheduler_config.json as scheduler kwargs (diffusers' bookkeeping keys dropped)."""
    raw = json.loads((CONFIGS / config_dir / "scheduler_config.json").read_text())
    cfg = {k: v for k, v in raw.items() if not k.startswith("_") and v is not None}
    cfg.setdefault("prediction_type", "epsilon")  # the 2022 configs predate the key; these models predict noise
    return cfg


class PretrainedPixelTask(HubWeights, Task):
    repo_id: str = ""                 # its configs are shipped in configs/<repo name>/
    metrics = ("fid",)
    primary_metric = "fid"
    default_fid_samples = 50_000
    reference_hint: str = ""          # where to get the task's reference images or statistics

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.config_dir = cls.repo_id.split("/")[-1]
        cls.schedule_config = scheduler_kwargs(cls.config_dir)

    def __init__(self, weights=None, random_weights: bool = False, reference=None, data_dir=None):
        super().__init__(weights, random_weights, reference, data_dir)
        self._checksum = None
        self._config = self.architecture()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, size, size) of the network `dash()` returned (before that call, of the shipped config)."""
        return self._config["in_channels"], self._config["sample_size"], self._config["sample_size"]

    def download_hint(self) -> str:
        return f"run `hf download {self.repo_id} --local-dir DIR` and pass --weights DIR"

    def dash(self) -> UNet2DModel:
        if self.random_weights:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                return UNet2DModel.from_config(self._config).eval().requires_grad_(False)
        model = self._load(self.folder())
        self._config = dict(model.config)
        return model

    def checksum(self) -> str:
        if self._checksum is None:
            if self.random_weights:
                config = json.dumps(self.architecture(), sort_keys=True).encode()
                self._checksum = "random-" + hashlib.sha256(config).hexdigest()[:9]
            else:
                folder = self.folder()
                files = [folder / "config.json", self._weight_file(folder)]
                lines = "".join(f"{f.name} {sha256(f)}\n" for f in files)
                self._checksum = hashlib.sha256(lines.encode()).hexdigest()[:16]
        return self._checksum

    def folder(self) -> Path:
        """The diffusers folder holding the weights: --weights, else the Hugging Face cache."""
        if self.weights is not None:
            if not self.weights.is_dir():
                raise MissingWeightsError(f"--weights {self.weights} is not a folder of {self.repo_id}: "
                                          f"{self.download_hint()}")
            return self.weights
        return self.snapshot(self.repo_id, ["*.json", *WEIGHT_FILES], self.repo_id, self.download_hint())

    def _weight_file(self, folder: Path) -> Path:
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
        raise MissingWeightsError(f"{folder} holds no {' or '.join(WEIGHT_FILES)}: {self.download_hint()}")

    def _load(self, folder: Path) -> UNet2DModel:
        weights = self._weight_file(folder)
        try:
            config = UNet2DModel.load_config(folder)
        except Exception as e:
            raise CorruptWeightsError(f"{folder / 'config.json'} unreadable ({first_line(e)}); "
                                      f"{self.download_hint()}") from None
        want = self.architecture()
        wrong = [k for k in ARCHITECTURE_KEYS if _norm(config.get(k)) != _norm(want.get(k))]
        if wrong:
            k = wrong[0]
            raise CorruptWeightsError(f"{folder} holds another network than {self.repo_id} ({k} {config.get(k)!r}, "
                                      f"expected {want.get(k)!r}); pass the folder of {self.repo_id}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, info = UNet2DModel.from_pretrained(folder, output_loading_info=True)
        except Exception as e:
            raise CorruptWeightsError(f"{weights} does not load as the network its config describes "
                                      f"({first_line(e)}); {self.download_hint()}") from None
        bad = [*info.get("missing_keys", []), *[m[0] if isinstance(m, tuple) else m
                                                  for m in info.get("mismatched_keys", [])]]
        if bad:
            raise CorruptWeightsError(f"{weights} does not fit its config.json (missing or mismatched "
                                      f"{sorted(bad)[:3]}); {self.download_hint()}")
        return model.eval().requires_grad_(False)

    def data(self, split: str = "train"):
        raise MissingDataError(f"task {self.name} has no local data; its reference comes from --reference")

    def reference(self, metric: str) -> ReferenceSource:
        if self.reference_path is None:
            raise MissingReferenceError(f"task {self.name}: {metric} needs reference statistics: pass --reference "
                                        f"with an image folder or a .npz of mu and sigma ({self.reference_hint})")
        return ReferenceSource.from_path(self.reference_path)


def _norm(value):
    return list(value) if isinstance(value, tuple | list) else value
