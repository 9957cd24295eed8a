"""Tasks: a data set, a pre-trained Dash model and a domain feature extractor, by name."""

from baselines.tasks.fmnist import FashionMNIST

TASKS = {"fmnist": FashionMNIST}


def get_task(name: str, **kwargs):
    """A registered task by name, or any project's own task class as "package.module:Class"."""
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load task {name!r}: {e}") from None
        return cls(**kwargs)
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} "
                         "or a class path module:Class") from None
    return cls(**kwargs)
