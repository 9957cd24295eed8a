"""Text-to-image tasks whose Dash is a latent `UNet2DConditionModel` fed by CLIP text encoders, decoded by a
VAE (`TextToImageTask`), and the first of them: Stable Diffusion v1.4 on MS-COCO prompts (`sd14-coco`).

Where the weights come from: `--weights DIR`, a folder in diffusers' pipeline layout (`unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, ...; `hf download REPO --local-dir DIR` leaves it so), else the Hugging Face cache
(downloaded there unless HF_HUB_OFFLINE=1). Every component is checked before anything is sampled: absent
weights end in one line naming the downloads, a folder holding another network in one line saying so.

Conditions: seed s gets the prompt `prompts[s % len(prompts)]` (`baselines.tasks.prompts`; `prompts=FILE` takes a
text file or an MS-COCO captions JSON, else a small built-in list), encoded as diffusers' pipeline encodes it
(its own `encode_prompt`); `unconditional()` is the empty prompt's encoding, the `uncond` of classifier-free
guidance, and `denoiser(dash)` builds the guided Denoiser at `default_guidance`. `decode()` runs the VAE on the
latents divided by its `scaling_factor`, in float32, before any metric sees an image.

`random_weights=True` builds the real UNet from the config shipped in `configs/` (latency does not depend on
weight values); there is no text encoder then, and every condition is the zero embedding of the right shape.

Metrics: FID against --reference (MS-COCO val images or their statistics; the usual protocol is 30,000 prompts
from captions_val2014.json and the matching images) and CLIP score of each image against its own prompt.
"""

import hashlib
import json
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from baselines.checkpoint import CorruptWeightsError, sha256
from baselines.denoisers import Condition, Denoiser
from baselines.tasks.base import MissingReferenceError, MissingWeightsError, ReferenceSource, Task
from baselines.tasks.data import MissingDataError
from baselines.tasks.hub import HubWeights, first_line
from baselines.tasks.prompts import DEFAULT_PROMPTS, load_prompts, prompts_checksum, prompts_for

# Weight files diffusers and transformers read, in their order of preference.
WEIGHT_FILES = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                "text_encoder": ("model.safetensors", "pytorch_model.bin")}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
CACHE_PROMPTS = 1024  # encoded prompts kept in host memory (every method and budget asks for the same seeds)
DECODE_BATCH = 4      # latents per VAE call: decoding at 512-1024 px takes GBs per image


def _kind(component: str) -> str:
    return component.removesuffix("_2")  # SDXL's second text encoder and tokenizer load as the first do


def _mismatch(have, want) -> bool:
    """`want`: None (must be unset), True (must be set, any value) or the value itself."""
    if want is None:
        return have is not None
    return have is None if want is True else have != want


class TextToImageTask(HubWeights, Task):
    """A latent text-to-image Dash: UNet2DConditionModel + CLIP text encoder(s) + AutoencoderKL.

    Subclasses set `components`: component -> (Hugging Face repo, its folder in that repo, diffusers/transformers
    class name), and `pipeline_class`, the diffusers pipeline whose `encode_prompt` they follow."""

    components: dict[str, tuple[str, str, str]] = {}
    pipeline_class: str = ""
    pipeline_kwargs: dict = {}        # the pipeline's own options (safety checker off, ...)
    config_dir: str = ""              # the UNet's config.json is shipped in configs/<config_dir>/
    default_guidance: float = 7.5
    metrics = ("fid", "clip_score")
    primary_metric = "fid"
    default_fid_samples = 30_000
    reference_hint = ""
    unet_requires: dict = {}          # UNet config values that make a folder this task's network (_mismatch)

    def __init__(self, weights=None, random_weights: bool = False, reference=None, data_dir=None, prompts=None):
        super().__init__(weights, random_weights, reference, data_dir)
        self.prompts = load_prompts(prompts) if prompts is not None else list(DEFAULT_PROMPTS)
        self._config = self.architecture()
        self._folders = self._checksum = self._pipe = self._unet = None
        self._cache: OrderedDict = OrderedDict()

    # -- weights ---------------------------------------------------------------------------------------------------
    @property
    def repos(self) -> list[str]:
        return list(dict.fromkeys(repo for repo, _, _ in self.components.values()))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(latent channels, size, size) of the UNet `dash()` returned (before that call, of the shipped config)."""
        return self._config["in_channels"], self._config["sample_size"], self._config["sample_size"]

    def download_hint(self) -> str:
        return " and ".join(f"`hf download {r}`" for r in self.repos) + " (or pass --weights DIR in diffusers' " \
            f"layout: {', '.join(c + '/' for c in self.components)})"

    def folders(self) -> dict[str, Path]:
        """Component -> its folder: --weights DIR/<component>, else the Hugging Face cache. Checked complete."""
        if self._folders is not None:
            return self._folders
        if self.weights is not None:
            if not self.weights.is_dir():
                raise MissingWeightsError(f"--weights {self.weights} is not a folder: {self.download_hint()}")
            folders = {c: self.weights / c for c in self.components}
        else:
            folders = {c: self._snapshot(repo) / sub for c, (repo, sub, _) in self.components.items()}
        for component, folder in folders.items():
            self._files(component, folder)
        self._folders = folders
        return folders

    def _snapshot(self, repo: str) -> Path:
        subs = [sub for r, sub, _ in self.components.values() if r == repo]
        patterns = [f"{sub}/{name}" if sub else name for sub in subs
                    for name in ("*.json", "*.txt", "diffusion_pytorch_model.safetensors", "model.safetensors")]
        return self.snapshot(repo, patterns, " and ".join(self.repos), f"run {self.download_hint()}")

    def _files(self, component: str, folder: Path) -> list[Path]:
        """Every file of `component` that loading reads; a missing one ends in MissingWeightsError."""
        kind = _kind(component)
        if kind == "tokenizer":
            files = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
            if not (folder / "vocab.json").is_file():
                raise MissingWeightsError(f"{folder} holds no tokenizer (vocab.json): run {self.download_hint()}")
            return files
        weights = next((folder / n for n in WEIGHT_FILES[kind] if (folder / n).is_file()), None)
        if weights is None or not (folder / "config.json").is_file():
            raise MissingWeightsError(f"{folder} holds no {component} (config.json and "
                                      f"{' or '.join(WEIGHT_FILES[kind])}): run {self.download_hint()}")
        return [folder / "config.json", weights]

    def checksum(self) -> str:
        """16 hex digits over every file the task loads (the samples depend on each) and the prompt list."""
        if self._checksum is None:
            if self.random_weights:
                lines = json.dumps(self.architecture(), sort_keys=True) + "\n"
                prefix = "random-"
            else:
                lines = "".join(f"{c}/{f.name} {sha256(f)}\n" for c, folder in sorted(self.folders().items())
                                for f in self._files(c, folder))
                prefix = ""
            lines += f"prompts {prompts_checksum(self.prompts)}\n"
            self._checksum = prefix + hashlib.sha256(lines.encode()).hexdigest()[:16 - len(prefix)]
        return self._checksum

    def _load(self, component: str):
        import diffusers
        import transformers

        name = self.components[component][2]
        cls = getattr(diffusers, name, None) or getattr(transformers, name)
        folder = self.folders()[component]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = cls.from_pretrained(folder)
        except Exception as e:
            raise CorruptWeightsError(f"{folder} does not load as {name} ({first_line(e)}); run "
                                      f"{self.download_hint()}") from None
        return model.eval().requires_grad_(False) if isinstance(model, torch.nn.Module) else model

    def dash(self):
        from diffusers import UNet2DConditionModel

        if self.random_weights:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self._unet = UNet2DConditionModel.from_config(self._config).eval().requires_grad_(False)
            return self._unet
        folder = self.folders()["unet"]
        config = UNet2DConditionModel.load_config(folder)
        want = {"_class_name": "UNet2DConditionModel", "in_channels": 4, **self.unet_requires}
        wrong = [k for k, v in want.items() if _mismatch(config.get(k), v)]
        if wrong:
            k = wrong[0]
            raise CorruptWeightsError(f"{folder} holds another network than {self.components['unet'][0]}'s UNet "
                                      f"({k} {config.get(k)!r}); pass its folder")
        self._unet = self._load("unet")
        self._config = dict(self._unet.config)
        self.folders()  # every component is checked before anything is sampled
        return self._unet

    # -- conditions ------------------------------------------------------------------------------------------------
    def pipeline(self):
        """diffusers' pipeline around the loaded components: its prompt encoding is the reference one."""
        if self._pipe is None:
            import diffusers

            parts = {c: self._load(c) for c in self.components if c != "unet"}
            unet = self._unet if self._unet is not None else self.dash()
            cls = getattr(diffusers, self.pipeline_class)
            scheduler = diffusers.DDIMScheduler.from_config(self.schedule_config, clip_sample=False)  # unused
            self._pipe = cls(unet=unet, scheduler=scheduler, **parts, **self.pipeline_kwargs)
        return self._pipe

    def _device(self):
        return next(self._unet.parameters()).device if self._unet is not None else torch.device("cpu")

    def prompts_for(self, seeds) -> list[str]:
        """The prompt each seed's sample is made from (what CLIP score compares it with)."""
        return prompts_for(self.prompts, seeds)

    @torch.inference_mode()
    def conditions(self, seeds) -> Condition:
        prompts = self.prompts_for(seeds)
        if self.random_weights:
            return self.unconditional().expand(len(prompts))
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            enc = self.encode(todo)
            for k, p in enumerate(todo):
                self._cache[p] = enc[k:k + 1].to("cpu")
                if len(self._cache) > CACHE_PROMPTS:
                    self._cache.popitem(last=False)
        return Condition.cat([self._cache[p] for p in prompts])

    @torch.inference_mode()
    def unconditional(self) -> Condition:
        """The empty prompt's condition (batch 1): the unconditional branch of classifier-free guidance."""
        if self.random_weights:
            return self.zero_condition()
        return self.encode([""], unconditional=True).to("cpu")

    def zero_condition(self) -> Condition:
        return Condition(torch.zeros(1, 77, self._config["cross_attention_dim"]))

    def encode(self, prompts: list[str], unconditional: bool = False) -> Condition:
        pipe, device = self.pipeline(), self._device()
        pipe.text_encoder.to(device)
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return Condition(embeds)

    def denoiser(self, dash, guidance_scale: float | None = None) -> Denoiser:
        """The Dash's denoiser at `guidance_scale` (default `default_guidance`) with this task's unconditional
        condition."""
        w = self.default_guidance if guidance_scale is None else guidance_scale
        return Denoiser(dash, self.schedule_config, guidance_scale=w, uncond=self.unconditional())

    # -- images ----------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        device = self._device()
        vae = self.pipeline().vae.to(device)
        scale = vae.config.scaling_factor
        return torch.cat([vae.decode(z.to(device, torch.float32) / scale).sample.clamp(-1, 1).float().cpu()
                          for z in x.split(DECODE_BATCH)])

    def data(self, split: str = "train"):
        raise MissingDataError(f"task {self.name} has no local data; FID's reference comes from --reference")

    def reference(self, metric: str) -> ReferenceSource:
        if metric != "fid":
            raise ValueError(f"task {self.name}: {metric} has no reference statistics (CLIP score compares each "
                             f"image with its own prompt, task.prompts_for(seeds))")
        if self.reference_path is None:
            raise MissingReferenceError(f"task {self.name}: fid needs reference statistics: pass --reference with an "
                                        f"image folder or a .npz of mu and sigma ({self.reference_hint})")
        return ReferenceSource.from_path(self.reference_path)


SD14 = "CompVis/stable-diffusion-v1-4"


class SD14Coco(TextToImageTask):
    name = "sd14-coco"
    config_dir = "stable-diffusion-v1-4"
    components = {"unet": (SD14, "unet", "UNet2DConditionModel"), "vae": (SD14, "vae", "AutoencoderKL"),
                  "text_encoder": (SD14, "text_encoder", "CLIPTextModel"),
                  "tokenizer": (SD14, "tokenizer", "CLIPTokenizer")}
    pipeline_class = "StableDiffusionPipeline"
    pipeline_kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # The checkpoint's scheduler_config.json (PNDM's bookkeeping keys left out): scaled-linear betas, noise
    # prediction; every solver builds its own scheduler from these.
    schedule_config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           steps_offset=1, prediction_type="epsilon")
    default_guidance = 7.5
    unet_requires = {"addition_embed_type": None, "time_cond_proj_dim": None}
    reference_hint = "MS-COCO val2014 images matching the prompts, or their clean-fid statistics"
