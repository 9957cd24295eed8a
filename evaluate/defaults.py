"""One table of defaults, mirrored by the CLI (`python -m evaluate.run`) and `evaluate.run.run()`.

Each entry carries the flag's meaning, so `--help` says what the flag does and not only its default.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    default: object
    help: str
    kind: type | None = None  # the value type, for flags whose default is None (else the default's type)


FLAGS = dict(
    methods=Flag("morse,ddim,dpm", "comma-separated method names (the registry in evaluate/methods.py)"),
    task=Flag("fmnist", "a registered task name, or your own task class as package.module:Class"),
    budgets=Flag(None, "comma-separated step budgets in LSD (= NFE for the Dash-only baselines); default: the "
                       "task's `default_budgets`, else 2,4,8,16", str),
    num_samples=Flag(None, "samples per method and budget; default: the task's `default_num_samples`, else 1000",
                     int),
    batch_size=Flag(64, "sampling batch size; results do not depend on it (the per-image sweet spot on CPU)"),
    shard_size=Flag(250, "seeds per cache file: a kill loses at most this many samples per cell; results do not "
                         "depend on it, but a cache made with another size is sampled again"),
    device=Flag("cpu", "torch device, e.g. cpu or cuda"),
    seed=Flag(0, "sample i uses seed `seed + i`"),
    out=Flag(None, "report folder (default reports/<task>/<run>); rerunning with the same folder resumes", str),
    run=Flag("default", "name of the report folder under reports/<task>/ when --out is not given"),
    fid_samples=Flag(0, "Inception FID on this many samples per cell (slow on CPU; 0: off unless the task's "
                        "primary metric is FID)"),
    fid_reference=Flag(10000, "real train images behind the FID reference statistics"),
    bootstrap=Flag(200, "resamples of seeds for confidence intervals (0: none)"),
    saturation=Flag(0.05, "a baseline budget improving quality by < this fraction at the next budget is "
                          "saturated and left out of mean speedups"),
    dot_ratio=Flag(None, "N used to plan Morse schedules (default: the Dot's model card)", float),
    dots_per_dash=Flag(None, "Dot steps after each Dash step (default: the Dot's model card)", int),
    method_options=Flag("", "KEY=VALUE pairs, comma-separated, handed to every method's plug-in (each reads its own "
                            "keys and ignores the rest), e.g. dot=runs/dot/dot.safetensors: Morse's Dot file instead "
                            "of the committed one"),
    clamp_samples=Flag(False, "clamp the images to the data range [-1, 1] before the metrics, as an image file would "
                              "hold them (default: the metrics read the samples as the sampler returns them; the "
                              "Inception FID quantises to 8 bits, which clamps either way)"),
    min_samples=Flag(200, "refuse fewer samples than this (FD of 128-d features needs a full-rank covariance)"),
    warn_samples=Flag(1000, "warn below this many samples (Frechet distances are biased upward)"),
    spacing=Flag("trailing", "timestep spacing where the scheduler offers it: trailing, leading or linspace"),
    data_dir=Flag(None, "folder holding the task's data (default: where the task's package installs it)", str),
    force=Flag(False, "accept fewer samples than --min-samples"),
    weights=Flag(None, "folder of the task's pretrained Dash (diffusers format; default: the Hugging Face cache)", str),
    reference=Flag(None, "reference of the task's FID: an image folder or a .npz with mu and sigma", str),
    random_weights=Flag(False, "the task's real architecture with random weights, no download (--latency-only only)"),
    latency_only=Flag(False, "measure per-call latency, GFLOP and N of the methods' networks; no sampling"),
    dtype=Flag("fp32", "network precision: fp32, tf32 (CUDA: fp32 weights, TF32 arithmetic), fp16 or bf16; the solver "
                       "and the samples stay float32"),
    compile=Flag("none", "none, graphs (a plain CUDA graph per batch shape; CUDA only), reduce-overhead or "
                         "max-autotune (torch.compile modes)"),
    prompts=Flag(None, "prompt file of a text-to-image task: one prompt per line, or an MS-COCO captions JSON; seed "
                       "s gets prompt s mod their count (default: the task's built-in list)", str),
    guidance=Flag("", "comma-separated classifier-free guidance scales (>= 1), each a sweep axis of a guided task "
                      "(default: the task's own scale)"),
    clip_model=Flag(None, "open_clip model name behind clip_score (default: the task's, else ViT-B-32)", str),
    clip_weights=Flag(None, "its weights: a local checkpoint file or an open_clip pretrained tag already in the "
                            "Hugging Face cache (default: the task's, else openai)", str),
    latency_batches=Flag("", "--latency-only batch sizes, comma-separated (default 1,16,64, and 256 on a GPU)"),
    latency_budget_s=Flag(120.0, "--latency-only skips a batch size whose predicted timing takes longer (s)"),
)

DEFAULTS = {key: flag.default for key, flag in FLAGS.items()}
FALLBACK = dict(budgets="2,4,8,16", num_samples=1000)  # where neither the command nor the task says
