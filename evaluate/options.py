"""The run's options, typed: one frozen dataclass generated from the flag table (evaluate.defaults.FLAGS), so the
CLI, `evaluate.run.run(**options)` and every reader of an option share one list of names, defaults and types.

`validate` fills what the command left unset (the task's own defaults, else the suite's) and refuses bad input
with a BadInput before anything is loaded or written. The comma-separated flags are read through the properties
`method_names`, `budget_values` and `guidance_values`.
"""

import math
import warnings
from dataclasses import field, fields, make_dataclass, replace
from pathlib import Path

from baselines import distributed
from baselines.runtime import check_speed_options, resolve_device
from baselines.tasks import TASKS
from evaluate.defaults import FALLBACK, FLAGS
from evaluate.methods import check_names
from evaluate.provenance import BadInput

SPACINGS = ("trailing", "leading", "linspace")


def parse_methods(text: str) -> list[str]:
    return [m.strip() for m in str(text).split(",") if m.strip()]


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise BadInput(f"--budgets must be comma-separated numbers, got {text!r}") from None
    if not budgets or any(not (b >= 1 and math.isfinite(b)) for b in budgets):
        raise BadInput(f"every budget must be a number >= 1 (LSD), got {text!r}")
    return sorted(set(budgets))


def parse_guidance(text: str) -> list[float]:
    """The guidance scales to sweep, in the order given; none: the task's own."""
    try:
        scales = [float(w) for w in str(text).split(",") if w.strip()]
    except ValueError:
        raise BadInput(f"--guidance must be comma-separated numbers, got {text!r}") from None
    if any(not (w >= 1 and math.isfinite(w)) for w in scales):
        raise BadInput(f"every guidance scale must be a number >= 1 (1: no guidance), got {text!r}")
    return list(dict.fromkeys(scales))


def parse_method_options(text: str) -> dict[str, str]:
    pairs = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p or not p.partition("=")[0].strip()]
    if bad:
        raise BadInput(f"--method-options takes KEY=VALUE pairs, comma-separated; got {bad[0]!r}")
    return {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in pairs)}


def _field(key: str, flag):
    kind = flag.kind or type(flag.default)
    return key, kind | None if flag.default is None else kind, field(default=flag.default)


Options = make_dataclass(
    "Options", [_field(key, flag) for key, flag in FLAGS.items()], frozen=True, kw_only=True,
    namespace=dict(
        __doc__="One run's options, as the flags of evaluate.defaults.FLAGS name them.",
        method_names=property(lambda self: tuple(parse_methods(self.methods))),
        budget_values=property(lambda self: tuple(parse_budgets(self.budgets))),
        guidance_values=property(lambda self: tuple(parse_guidance(self.guidance))),
        method_option_values=property(lambda self: parse_method_options(self.method_options)),
    ))


def options(**values) -> Options:
    unknown = sorted(set(values) - {f.name for f in fields(Options)})
    if unknown:
        raise TypeError(f"unknown run option(s) {', '.join(unknown)}: the options are evaluate.defaults.FLAGS")
    return Options(**values)


def task_defaults(opts: Options) -> Options:
    """--budgets and --num-samples left unset: the registered task's own (a sweep that fits its cost), else the
    suite's."""
    cls = TASKS.get(opts.task)
    fill = {k: getattr(cls, f"default_{k}", None) or FALLBACK[k] for k in FALLBACK if getattr(opts, k) is None}
    return replace(opts, **fill)


def validate(given) -> Options:
    """`given`: an Options or a dict of option values. Returns the Options with the task's defaults filled."""
    opts = given if isinstance(given, Options) else options(**given)
    methods = parse_methods(opts.methods)
    if not methods:
        raise BadInput("--methods is empty; e.g. --methods morse,ddim,dpm")
    try:
        check_names(methods)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if opts.task not in TASKS and ":" not in opts.task:
        raise BadInput(f"unknown task {opts.task!r}; valid tasks: {', '.join(TASKS)} or a class path module:Class")
    opts = task_defaults(opts)
    if opts.spacing not in SPACINGS:
        raise BadInput(f"--spacing must be trailing, leading or linspace, got {opts.spacing!r}")
    check_sample_count(opts)
    if opts.out is not None and Path(opts.out).exists() and not Path(opts.out).is_dir():
        raise BadInput(f"--out {opts.out} is a file; name a folder (new, or one this command wrote before)")
    if opts.batch_size < 1:
        raise BadInput("--batch-size must be at least 1")
    if opts.shard_size < 1:
        raise BadInput("--shard-size must be at least 1")
    if opts.random_weights and not opts.latency_only:
        raise BadInput("--random-weights gives an untrained Dash, whose samples mean nothing: add --latency-only")
    if opts.latency_only and distributed.launched():
        raise BadInput("--latency-only runs as one process: start it with python, not torchrun")
    try:
        check_speed_options(opts.dtype, opts.compile, resolve_device(opts.device))
    except ValueError as e:
        raise BadInput(str(e)) from None
    parse_budgets(opts.budgets)
    parse_guidance(opts.guidance)
    parse_method_options(opts.method_options)
    return opts


def check_sample_count(opts: Options) -> None:
    n = opts.num_samples
    if n < opts.min_samples and not opts.force:
        raise BadInput(f"--num-samples {n} is too few for a stable Frechet distance (floor "
                       f"{opts.min_samples}); use more, or --force")
    if n < opts.warn_samples:
        warnings.warn(f"{n} samples per cell: Frechet distances are biased upward below "
                      f"{opts.warn_samples}", stacklevel=3)
    if n < 2:
        raise BadInput("--num-samples must be at least 2")


def check_budgets(budgets, task) -> None:
    """A budget above the schedule's training steps cannot be sampled by any solver (the scheduler refuses more
    steps than the Dash was trained on)."""
    steps = task.schedule_config.get("num_train_timesteps", 1000)
    over = [b for b in budgets if b > steps]
    if over:
        raise BadInput(f"--budgets {over[0]:g} is above the {steps} training steps of task {task.name}'s schedule: "
                       f"the largest budget is {steps}")
