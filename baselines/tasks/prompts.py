"""Prompts of text-to-image tasks, and which prompt each seed's sample gets.

A prompt file is either plain text, one prompt per line (blank lines ignored, surrounding whitespace
stripped), or an MS-COCO captions JSON (`captions_val2014.json` and the like: every
`annotations[*].caption`, in file order, whitespace collapsed; a `.json` suffix selects this reader).

Assignment: seed s gets prompt `prompts[s % len(prompts)]`. It depends on nothing but the seed and the
list, so every method, budget, batch size and process count sees the same prompt for the same seed (the
noise is per seed too), and seeds 0..K-1 cover the first K prompts once each.
"""

import hashlib
import json
from pathlib import Path

# Used when a task is given no prompt file: enough for smoke tests and latency runs, not a benchmark (the
# MS-COCO protocol takes its prompts from --prompts captions_val2014.json).
DEFAULT_PROMPTS = (
    "a red bicycle leaning against a brick wall",
    "a bowl of fruit on a wooden kitchen table",
    "a dog running on a sandy beach at sunset",
    "a city street with tall buildings and yellow taxis",
    "a small boat on a calm lake surrounded by mountains",
    "a cat sleeping on a windowsill in the afternoon sun",
    "a plate with a sandwich and a cup of coffee",
    "a train passing through a snowy forest",
)


class PromptsError(ValueError):
    """A prompt file that holds no usable prompts; the message says what to pass instead."""


class MissingPromptsError(FileNotFoundError):
    """The prompt file is not there."""


def load_prompts(path) -> list[str]:
    """The prompts of a text file or an MS-COCO captions JSON (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPromptsError(f"pass --prompts an existing file (one prompt per line, or an MS-COCO captions "
                                  f"JSON): {path} does not exist")
    if path.suffix.lower() == ".json":
        return _coco_captions(path)
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise PromptsError(f"pass --prompts a file with at least one prompt: {path} is empty or holds only blank "
                           f"lines")
    return prompts


def _coco_captions(path: Path) -> list[str]:
    hint = "pass --prompts an MS-COCO captions JSON (annotations[*].caption) or a text file, one prompt per line"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PromptsError(f"{hint}: {path} is not valid JSON ({e})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    captions = [" ".join(a["caption"].split()) for a in annotations or []
                if isinstance(a, dict) and isinstance(a.get("caption"), str) and a["caption"].strip()]
    if not captions:
        raise PromptsError(f"{hint}: {path} has no annotations[*].caption")
    return captions


def prompt_index(seed: int, count: int) -> int:
    return int(seed) % count


def prompts_for(prompts, seeds) -> list[str]:
    """The prompt of each seed's sample."""
    return [prompts[prompt_index(s, len(prompts))] for s in seeds]


def prompts_checksum(prompts) -> str:
    """16 hex digits over the list, in order: samples depend on it as much as on the weights."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
