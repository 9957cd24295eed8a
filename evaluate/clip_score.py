"""CLIP score (Hessel et al. 2021) with open_clip, from local weights only: fail fast rather than download."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_WEIGHTS_NAME
from open_clip.pretrained import _get_safe_alternatives, get_pretrained_cfg


def resolve_weights(model_name: str, pretrained: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """(local checkpoint file, open_clip tag config or {}) for a file path or a tag already in the HF hub cache."""
    tag_cfg = get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        path = Path(pretrained).expanduser()
        if path.is_file():
            return str(path), {}
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise FileNotFoundError(f"CLIP checkpoint {pretrained!r} for {model_name} not found: put the .safetensors/"
                                f".bin/.pt file there or use a pretrained tag of {model_name} ({tags})")
    repo, filename = os.path.split(tag_cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    # The cache lookup touches no network, unlike hf_hub_download, which retries before failing when offline.
    # Candidate order is the one open_clip downloads in (safetensors first), so either file it fetched is found.
    for name in [*_get_safe_alternatives(filename), filename]:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(hit, str):  # a miss is None or a "known to be absent" sentinel
            return hit, tag_cfg
    raise FileNotFoundError(f"CLIP weights for {model_name}/{pretrained} not found in the HF hub cache: download them "
                            f"with `hf download {repo} {filename}` or pass a local checkpoint file as pretrained=PATH")


class ClipScorer:
    """Per-image CLIP score 100 * max(cos(image, text), 0), the convention of torchmetrics' CLIPScore."""

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str = "openai", device: str | torch.device = "cpu",
                 cache_dir: str | None = None):
        path, tag_cfg = resolve_weights(model_name, pretrained, cache_dir)
        self.weights = path  # the file the scores come from: its checksum goes beside them
        # Handing open_clip a file path (so it cannot download) skips its tag handling: re-apply what the tag
        # sets, chiefly QuickGELU for the OpenAI weights and the tag's mean/std.
        model = open_clip.create_model(model_name, pretrained=path, device=device, require_pretrained=True,
                                       force_quick_gelu=tag_cfg.get("quick_gelu", False), force_preprocess_cfg=tag_cfg)
        self._setup(model, open_clip.get_tokenizer(model_name, cache_dir=cache_dir))

    @classmethod
    def from_model(cls, model: torch.nn.Module, preprocess, tokenizer) -> "ClipScorer":
        """Wrap a built open_clip model. `preprocess` (open_clip's PIL transform, or None) is unused: tensors are
        preprocessed on the model's device from the model's own preprocess config, which that transform mirrors."""
        self = cls.__new__(cls)
        self.weights = None
        self._setup(model, tokenizer)
        return self

    def _setup(self, model: torch.nn.Module, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size") or model.visual.image_size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        # A model built without open_clip's factory carries no mean/std; every OpenAI-style CLIP uses these.
        mean, std = cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN, cfg.get("std") or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (N, 1|3, H, W) -> normalised model input, as open_clip's eval transform does for a PIL image:
        bicubic resize of the short side, centre crop, then normalise."""
        x = ((images.to(self.device, torch.float32) + 1) / 2).clamp(0, 1)
        (th, tw), (h, w) = self.size, x.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = max(th, int(h * scale)), max(tw, int(w * scale))  # int() like torchvision's Resize
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = round((nh - th) / 2), round((nw - tw) / 2)
        # Clamp because bicubic overshoots, which the uint8 PIL pipeline the model was trained with cannot do.
        x = x[..., top:top + th, left:left + tw].clamp(0, 1).expand(-1, 3, -1, -1)
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str] | str, batch_size: int = 64) -> np.ndarray:
        """float64 CLIP score of each image against its prompt (a single string is used for every image)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = np.empty(len(images), dtype=np.float64)
        for k in range(0, len(images), batch_size):
            img = self.model.encode_image(self.preprocess(images[k:k + batch_size])).double()
            txt = self.model.encode_text(self.tokenizer(prompts[k:k + batch_size]).to(self.device)).double()
            cos = F.cosine_similarity(img, txt, dim=-1)
            out[k:k + batch_size] = (100 * cos.clamp(min=0)).cpu().numpy()
        return out

    def mean_score(self, images: torch.Tensor, prompts: Sequence[str] | str, batch_size: int = 64) -> float:
        return float(self.score(images, prompts, batch_size).mean())
