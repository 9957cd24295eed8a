"""Resumable training state shared by the Dash and Dot trainers, atomic file writes, and file
checksums.

One safetensors file holds the run's own tensors, the optimiser's moments (by parameter name),
the data RNG, and in its metadata the step and a key of the training arguments; it is written
to a temporary name and renamed, so a kill never leaves a half-written checkpoint.
"""

import hashlib
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CorruptWeightsError(ValueError):
    pass


class CheckpointMismatchError(ValueError):
    """A training checkpoint that is not this run's (written with other arguments, or past the steps asked for):
    the trainer's command line prints it as one line."""


def verify_weights(path: Path) -> None:
    """Check a weights file against the sha256 on its model card (the `.json` beside it), so a truncated
    or replaced file is refused in one line instead of failing inside the loader or sampling garbage."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    try:
        expected = json.loads(card_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        raise CorruptWeightsError(f"{path}: its model card {card_path.name} records no sha256 to check it "
                                  "against; restore the card (git checkout) or retrain") from None
    got = sha256(path)
    if got != expected:
        raise CorruptWeightsError(f"{path} does not match the sha256 on its model card ({got[:16]} instead of "
                                  f"{expected[:16]}): restore it with `git checkout -- {path}` or retrain "
                                  f"(see {path.with_suffix('.md').name})")


@contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path`, renamed onto it when the block completes: a kill or an error
    never leaves a half-written file under `path` (nor the temporary one after an error)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically (see `atomic_path`). Metadata values are stored as strings."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_keyed(path: Path, key: str, what: str) -> tuple[dict, dict] | None:
    """(tensors, metadata) of a cache file written for `key`; None when it is missing, was written for
    another key, or is unreadable (a truncated or foreign file: warned about, to be recomputed)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return (load_file(path), meta) if meta.get("key") == key else None
    except Exception as exc:
        warnings.warn(f"{what} {path} is unreadable ({type(exc).__name__}); recomputing it", stacklevel=3)
        return None


def save_training_state(path: Path, tensors: dict, opt, params: dict, gen, step: int, key: str, **meta) -> None:
    names = {id(p): n for n, p in params.items()}
    state = dict(tensors)
    for p, st in opt.state.items():
        state.update({f"opt/{names[id(p)]}/{k}": torch.as_tensor(v).clone() for k, v in st.items()})
    state["rng"] = gen.get_state()
    save_atomic(state, path, {"step": step, "key": key, **meta})


def load_training_state(path: Path, key: str, opt, params: dict, gen, hint: str) -> tuple[int, dict, dict]:
    """(step, the run's own tensors, metadata); step 0 and nothing else when there is no checkpoint.

    Restores the optimiser's moments and the RNG in place. `hint` ends the error for a checkpoint
    written with other arguments (what to delete or change)."""
    if not path.exists():
        return 0, {}, {}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("key") != key:
        raise CheckpointMismatchError(f"{path} was written with other training arguments; {hint}")
    state = load_file(path)
    for k, v in state.items():
        if k.startswith("opt/"):
            name, field = k[4:].rsplit("/", 1)
            # torch keeps Adam's step count on the CPU unless the optimiser is capturable or fused
            opt.state[params[name]][field] = v if field == "step" else v.to(params[name].device)
    gen.set_state(state["rng"])
    own = {k: v for k, v in state.items() if not k.startswith("opt/") and k != "rng"}
    return int(meta["step"]), own, meta


def emas_by_prefix(ema) -> dict:
    """{checkpoint prefix: EMAModel}: one EMA is saved as "ema"; a trainer keeping several names them."""
    return ema if isinstance(ema, dict) else {"ema": ema}


def model_and_ema_tensors(params: dict, ema, losses: list[float]) -> dict:
    """A trainer's own tensors for `save_training_state`: its weights, its diffusers EMAModel's shadow weights
    (by parameter name; `ema` may be a dict of EMAs by prefix) and the loss history."""
    tensors = {f"model/{n}": p for n, p in params.items()}
    for prefix, one in emas_by_prefix(ema).items():
        tensors.update({f"{prefix}/{n}": s for n, s in zip(params, one.shadow_params, strict=True)})
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    return tensors


def restore_model_and_ema(own: dict, model, params: dict, ema, step: int) -> list[float]:
    """Put back what `model_and_ema_tensors` saved at `step` (the checkpoint's); returns the loss history."""
    model.load_state_dict({k[6:]: v for k, v in own.items() if k.startswith("model/")}, strict=False)
    for prefix, one in emas_by_prefix(ema).items():
        for name, shadow in zip(params, one.shadow_params, strict=True):
            shadow.copy_(own[f"{prefix}/{name}"])
        one.optimization_step = step
    return own["losses"].tolist()
