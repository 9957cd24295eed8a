"""Tasks by name: the Dash model, its schedule, conditions, decode step, declared metrics and their
reference data (see `baselines.tasks.base.Task`)."""

import importlib
import inspect

from baselines.tasks.base import CorruptWeightsError, MissingReferenceError, MissingWeightsError, Task, complete
from baselines.tasks.celebahq256 import CelebAHQ256
from baselines.tasks.church256 import Church256
from baselines.tasks.cifar10 import CIFAR10
from baselines.tasks.fmnist import FashionMNIST
from baselines.tasks.fmnist_text import FashionMNISTText
from baselines.tasks.lcm_sdxl import LCMSDXL
from baselines.tasks.sd14_coco import SD14Coco

TASKS = {t.name: t for t in (FashionMNIST, FashionMNISTText, CIFAR10, CelebAHQ256, Church256, SD14Coco, LCMSDXL)}
# The embedded default: the task that runs offline with shipped weights (every command's default --task).
DEFAULT_TASK = FashionMNIST.name

__all__ = ["DEFAULT_TASK", "TASKS", "CorruptWeightsError", "MissingReferenceError", "MissingWeightsError", "Task",
           "get_task"]


def get_task(name: str, **kwargs):
    """A registered task by name, or any project's own task class as "package.module:Class".

    Options left at their defaults (None, False) are not passed to a class whose constructor does not
    take them, so task classes written before those options existed keep working."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load task {name!r}: {e}") from None
    else:
        try:
            cls = TASKS[name]
        except KeyError:
            raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} "
                             "or a class path module:Class") from None
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unused = [k for k, v in kwargs.items() if not takes_any and k not in params and v not in (None, False)]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ValueError(f"task {name!r} does not take {flags}")
    return complete(cls(**{k: v for k, v in kwargs.items() if takes_any or k in params}))
