"""Tasks: a data set, a pre-trained Dash model and a domain feature extractor, by name."""

from baselines.tasks.fmnist import FashionMNIST

TASKS = {"fmnist": FashionMNIST}


def get_task(name: str, **kwargs):
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}") from None
    return cls(**kwargs)
