"""Does the offline text-to-image default hold up? The measurements behind `fmnist-text`'s model cards:

    python -m evaluate.text_check [--num-samples 1000] [--steps 50] [--guidance 3] [--out runs/text-check]

* the small CLIP's zero-shot accuracy on the task's 10,000 test images, with the held-out templates;
* the text Dash at `--steps` DDIM steps and guidance `--guidance` on seeds 0..n-1 (prompt s mod 90 of the task's
  held-out-template prompts): the fraction of samples the FD classifier puts in the prompted class, the task's
  Frechet distance on that classifier's features, and the CLIP score of each sample against its own prompt and
  against a shuffled prompt;
* with --unconditional, the embedded unconditional Dash at 100 DDIM steps on the same seeds, and the ratio of
  the two FDs.

Samples are cached under --out like evaluate.run's (rerunning resumes); the numbers go to --out/text_check.json.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from baselines.checkpoint import write_text_atomic
from baselines.denoisers import Denoiser
from baselines.runtime import tune_malloc
from baselines.tasks import fmnist_clip, get_task
from evaluate.clip_score import ClipScorer
from evaluate.defaults import DEFAULTS
from evaluate.methods import Context, resolve
from evaluate.metrics import ClassifierFD
from evaluate.sweep import Sampling, ShardCache, SweepSpec, sweep

TEXT_TASK = f"{DEFAULTS['task']}-text"  # the text-conditional twin of the default task


def metric_rows(metric: ClassifierFD, samples, seeds=None) -> dict:
    """The metric's rows as {name: value}: FD, class shares and, with seeds, the prompted-class fraction."""
    return {name: value for name, value, _ in metric(samples, [], seeds).rows}


def one_cell(task, method, denoiser, steps, seeds, cache_dir: Path, batch_size: int, guidance=None):
    """One cell through evaluate.run's sweep and cache (same shards, same keys): rerunning resumes."""
    spec = SweepSpec((method,), (steps,), tuple(seeds), (guidance,), batch_size)
    sampling = Sampling({guidance: denoiser}, task.image_shape, "cpu", task.conditions if guidance else None)
    return sweep(spec, ShardCache.of(cache_dir, task), sampling)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--unconditional", action="store_true", help="also sample the unconditional Dash at 100 steps")
    p.add_argument("--out", type=Path, default=Path("runs/text-check"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--task", default=TEXT_TASK, help="a text task with a small CLIP and an unconditional twin")
    args = p.parse_args(argv)
    tune_malloc()
    torch.manual_seed(0)
    task = get_task(args.task)
    seeds = list(range(args.num_samples))
    result = dict(command="python -m evaluate.text_check " + " ".join(argv if argv is not None else sys.argv[1:]),
                  n_samples=len(seeds), steps=args.steps, guidance=args.guidance)

    clip, tokenizer = task.clip()
    test_x, test_y = task.data("test")
    result["zero_shot_accuracy_heldout_templates"] = fmnist_clip.zero_shot_accuracy(clip, tokenizer, test_x, test_y)

    dash = task.dash()
    ddim = resolve("ddim", Context(task, dash))
    cell = one_cell(task, ddim, task.denoiser(dash, args.guidance), args.steps, seeds, args.out / "cache" / "text",
                    args.batch_size, args.guidance)
    metric = task.primary_metric
    fd_metric = ClassifierFD(metric, task, {}, "cpu")  # the task's own FD, as evaluate.run computes it
    rows = metric_rows(fd_metric, cell.samples, seeds)
    fd = rows[metric]
    prompts = task.prompts_for(seeds)
    shuffled = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))]
    scorer = ClipScorer.from_model(clip, None, tokenizer)
    result.update(prompt_class_frac=rows["prompt_class_frac"], **{metric: fd},
                  clip_score_matched=scorer.mean_score(cell.samples, prompts),
                  clip_score_shuffled=scorer.mean_score(cell.samples, shuffled),
                  shuffled_same_class_frac=float(np.mean([fmnist_clip.class_of(a) == fmnist_clip.class_of(b)
                                                          for a, b in zip(prompts, shuffled, strict=True)])))
    if args.unconditional:
        base = task.unconditional_task()
        udash = base.dash()
        uddim = resolve("ddim", Context(base, udash))
        ucell = one_cell(base, uddim, Denoiser(udash, base.schedule_config), 100, seeds,
                         args.out / "cache" / "unconditional", args.batch_size)
        result[f"{metric}_unconditional_100_steps"] = metric_rows(fd_metric, ucell.samples)[metric]
        result["fd_ratio"] = fd / result[f"{metric}_unconditional_100_steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "text_check.json", json.dumps(result, indent=1) + "\n")
    for k, v in result.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
