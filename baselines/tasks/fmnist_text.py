"""The offline text-to-image default `fmnist-text`: Fashion-MNIST 32x32 from prompts, so that CLIP score, guidance
sweeps and Morse with guidance run end to end without a download.

The Dash is a `UNet2DConditionModel` cross-attending to the per-token features of the small fmnist CLIP's text
transformer (`baselines.tasks.fmnist_clip`), trained with 10% of its captions dropped to the empty prompt so
that it also predicts unconditionally (classifier-free guidance). It has the embedded Dash's layout with
cross-attention where that one has self-attention, and was started from the embedded Dash's weights
(`from_unconditional`). Guidance runs as in `sd14-coco`: uncond = the empty prompt's features.

Prompts: seed s gets prompt s mod K of `--prompts FILE`, else of the built-in 90 prompts from held-out templates
(prompt k names class k mod 10). Metrics: FD-fmnist against the Fashion-MNIST train set (with, per cell, the
fraction of samples the FD classifier puts in the prompted class), and CLIP score with the small CLIP.
"""

import hashlib
from collections import OrderedDict

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from baselines.checkpoint import sha256, verify_weights
from baselines.denoisers import Condition, Denoiser
from baselines.tasks import fmnist_clip
from baselines.tasks.base import MissingWeightsError
from baselines.tasks.fmnist import DASH_CONFIG, WEIGHTS, FashionMNIST
from baselines.tasks.prompts import load_prompts, prompts_checksum, prompts_for

TEXT_DASH_CONFIG = dict(
    DASH_CONFIG,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=fmnist_clip.TEXT_CFG["width"],
    attention_head_dim=8,  # UNet2DConditionModel reads it as the number of heads: 8, as in the embedded Dash
)


def build_text_dash() -> UNet2DConditionModel:
    return UNet2DConditionModel(**TEXT_DASH_CONFIG)


GUIDANCE_EMBEDDING_DIM = 256  # LCM's w-embedding width


def build_text_lcm(dash: UNet2DConditionModel) -> UNet2DConditionModel:
    """The text Dash with guidance as an input (`time_cond_proj_dim`, LCM's layout), starting as `dash`: the new
    projection of w's embedding into the time embedding is zero, so w changes nothing until distillation."""
    model = UNet2DConditionModel(**{**TEXT_DASH_CONFIG, "time_cond_proj_dim": GUIDANCE_EMBEDDING_DIM})
    missing, unexpected = model.load_state_dict(dash.state_dict(), strict=False)
    assert missing == ["time_embedding.cond_proj.weight"] and not unexpected, (missing, unexpected)
    torch.nn.init.zeros_(model.time_embedding.cond_proj.weight)
    first = next(dash.parameters())
    return model.to(first.device, first.dtype).eval().requires_grad_(False)


def from_unconditional(model: UNet2DConditionModel, dash_state: dict) -> list[str]:
    """Start `model` from the unconditional Dash: every tensor of the same name and shape is copied (convolutions,
    norms, time embedding: all but the attention blocks), each self-attention's group norm and q/k/v/out weights go
    to the transformer block's self-attention, and each transformer block's output projection is zeroed, so the
    new cross-attention blocks start as the identity and the network as the Dash without attention. Returns the
    names of the tensors left at their initialisation (cross-attention, LayerNorms, feed-forward)."""
    own = model.state_dict()
    new = {}
    for name, value in dash_state.items():
        target = name
        if ".attentions." in name:
            head, tail = name.split(".attentions.")
            index, rest = tail.split(".", 1)
            prefix = f"{head}.attentions.{index}"
            target = f"{prefix}.norm.{rest[len('group_norm.'):]}" if rest.startswith("group_norm.") else \
                f"{prefix}.transformer_blocks.0.attn1.{rest}"
        if target in own and own[target].shape == value.shape:
            new[target] = value
    for name in own:
        if name.endswith("proj_out.weight") or name.endswith("proj_out.bias") or name.endswith("proj_in.bias"):
            new[name] = torch.zeros_like(own[name])
        elif name.endswith("proj_in.weight"):  # a 1x1 convolution: the self-attention sees the group norm's output
            new[name] = torch.eye(own[name].shape[0]).view_as(own[name])
    model.load_state_dict(new, strict=False)
    return sorted(set(own) - set(new))


class FashionMNISTText(FashionMNIST):
    name = "fmnist-text"
    metrics = ("fd_fmnist", "clip_score")
    primary_metric = "fd_fmnist"
    default_guidance = 3.0
    # A guided step costs two Dash rows (~5 ms per row on 2 CPU cores): 3 budgets x 300 samples keep a 3-method,
    # 3-scale sweep within 10 min (400 samples took 12; FD on 300 samples is biased upward: compare cells of one
    # run, or pass --num-samples 1000 and take ~30 min).
    default_budgets = "2,4,8"
    default_num_samples = 300
    clip_model = fmnist_clip.CLIP_NAME
    clip_weights = str(fmnist_clip.CLIP_PATH)
    dash_path = WEIGHTS / "fmnist_text_dash.safetensors"
    lcm_path = WEIGHTS / "fmnist_text_lcm.safetensors"  # baselines.tasks.train_lcm --task fmnist-text

    def __init__(self, data_dir=None, weights=None, random_weights: bool = False, reference=None, prompts=None):
        super().__init__(data_dir, weights, random_weights, reference)
        self.prompts = load_prompts(prompts) if prompts is not None else fmnist_clip.default_prompts()
        fmnist_clip.register()
        self._clip = None
        self._cache: OrderedDict = OrderedDict()

    def dash(self) -> UNet2DConditionModel:
        if self.random_weights:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                return build_text_dash().eval().requires_grad_(False)
        for path in (self.dash_path, fmnist_clip.CLIP_PATH):
            if not path.exists():
                raise MissingWeightsError(f"weights {path} missing: restore them with `git checkout -- {path}` or "
                                          f"retrain (see {path.with_suffix('.md').name})")
            verify_weights(path)
        model = build_text_dash()
        model.load_state_dict(load_file(self.dash_path))
        return model.eval().requires_grad_(False)

    def unconditional_task(self) -> FashionMNIST:
        """The embedded unconditional task whose Dash this one's was started from (text_check compares them)."""
        return FashionMNIST(data_dir=self.data_dir)

    @staticmethod
    def lcm_network(dash: UNet2DConditionModel) -> UNet2DConditionModel:
        """A network of the distilled model's layout, on `dash`'s device and dtype (`lcm` loads its weights)."""
        return build_text_lcm(dash)

    def checksum(self) -> str:
        """16 hex digits over the Dash, the CLIP whose text features condition it, its merges and the prompts."""
        if self.random_weights:
            return "random-" + prompts_checksum(self.prompts)[:9]
        files = (self.dash_path, fmnist_clip.CLIP_PATH, fmnist_clip.BPE_PATH)
        lines = "".join(f"{p.name} {sha256(p)}\n" for p in files)
        return hashlib.sha256((lines + prompts_checksum(self.prompts)).encode()).hexdigest()[:16]

    def clip(self):
        """(CLIP model, tokenizer): the text encoder of the conditions."""
        if self._clip is None:
            model, tokenizer = fmnist_clip.build(fmnist_clip.CLIP_PATH)
            self._clip = model.eval().requires_grad_(False), tokenizer
        return self._clip

    def prompts_for(self, seeds) -> list[str]:
        return prompts_for(self.prompts, seeds)

    def prompted_classes(self, seeds) -> torch.Tensor:
        """The class each seed's prompt names (what the classifier should see in its sample); -1 where a prompt of
        a --prompts file names none."""
        def named(prompt):
            try:
                return fmnist_clip.class_of(prompt)
            except ValueError:
                return -1

        return torch.tensor([named(p) for p in self.prompts_for(seeds)])

    @torch.no_grad()  # not inference mode: a Dot in training cross-attends to these
    def encode(self, prompts: list[str]) -> torch.Tensor:
        model, tokenizer = self.clip()
        return fmnist_clip.token_features(model, tokenizer(prompts))

    def conditions(self, seeds) -> Condition:
        prompts = self.prompts_for(seeds)
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            self._cache.update(zip(todo, self.encode(todo).split(1)))
        return Condition(torch.cat([self._cache[p] for p in prompts]))

    def unconditional(self) -> Condition:
        """The empty prompt's features (batch 1): what the Dash learnt under condition dropout."""
        return Condition(self.encode([""]))

    def denoiser(self, dash, guidance_scale: float | None = None) -> Denoiser:
        w = self.default_guidance if guidance_scale is None else guidance_scale
        return Denoiser(dash, self.schedule_config, guidance_scale=w, uncond=self.unconditional())
