"""What the tasks whose weights live on the Hugging Face Hub share (the pixel DDPMs, the text-to-image models):
the shipped configs, the offline switch, the fetch from the Hub cache and the one-line error that names the
download command.

A task mixing in `HubWeights` sets `config_dir` (its network's config.json ships in configs/<config_dir>/) and
`download_hint()` (the command that fetches its weights)."""

import json
import os
from pathlib import Path

from baselines.tasks.base import MissingWeightsError

CONFIGS = Path(__file__).resolve().parent / "configs"


def offline() -> bool:
    # Read at call time: the CLI sets HF_HUB_OFFLINE after huggingface_hub has read its constants.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def first_line(exc: Exception) -> str:
    """An exception as one short line, for the one-line errors of a corrupt download."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class HubWeights:
    config_dir: str = ""

    def download_hint(self) -> str:
        raise NotImplementedError

    def architecture(self) -> dict:
        """The shipped config.json of the task's network: what a downloaded folder must match."""
        return json.loads((CONFIGS / self.config_dir / "config.json").read_text())

    def snapshot(self, repo: str, patterns: list[str], what: str, hint: str) -> Path:
        """The Hub cache's folder of `repo` (downloaded unless HF_HUB_OFFLINE=1); absent weights end in one line
        naming `what` is missing and `hint`, the command that fetches it."""
        from huggingface_hub import snapshot_download

        is_offline = offline()
        try:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=is_offline))
        except Exception:  # not cached (offline) or not reachable (online): either way the user must fetch it
            where = "not in the Hugging Face cache (HF_HUB_OFFLINE=1)" if is_offline else "not downloadable from here"
            raise MissingWeightsError(f"weights of {what} not found (no --weights, {where}): {hint}") from None
