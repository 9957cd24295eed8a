"""The method registry: every package's methods, found through Python entry points.

A package registers its methods as a `METHODS` dict (name -> factory, or the factory's import path
"module:factory") under the entry-point group `morse_bench.methods` in its pyproject.toml:

    [project.entry-points."morse_bench.methods"]
    baselines = "baselines.methods:METHODS"

The harness imports no accelerator: the baselines, Morse (morse/methods.py) and the accelerators
(baselines/accelerators/) are all found here. The protocol a method follows and the context a factory
gets live in baselines.methods (README: "Add an accelerator").
"""

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from baselines.methods import Context, Method, Network

__all__ = ["Context", "Method", "Network", "METHODS", "check_names", "resolve", "valid_names"]

GROUP = "morse_bench.methods"


def discover(group: str = GROUP) -> dict[str, Callable | str]:
    """Every method registered under the entry-point group, merged; a name registered twice is an error (the
    harness would otherwise pick one package's method over another's silently)."""
    methods, origin = {}, {}
    for ep in entry_points(group=group):
        for name, factory in ep.load().items():
            if name in methods:
                raise ValueError(f"method {name!r} is registered by both {origin[name]!r} and {ep.value!r}; "
                                 "rename one")
            methods[name], origin[name] = factory, ep.value
    if not methods:
        raise RuntimeError(f"no methods registered under the entry points {group!r}: install the project with "
                           "`pip install -e .`")
    return methods


METHODS: dict[str, Callable[[Context], Method] | str] = discover()


def valid_names() -> list[str]:
    return list(METHODS)


def check_names(names: list[str]) -> None:
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ValueError(f"unknown method {', '.join(map(repr, bad))}; valid: {', '.join(valid_names())}")


def resolve(name: str, ctx: Context) -> Method:
    """The method registered as `name`; a registry entry may be a factory or its import path "module:factory"
    (so a package's method costs no import until it is used)."""
    check_names([name])
    factory = METHODS[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(ctx)
