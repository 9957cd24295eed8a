"""The small CLIP of the offline text-to-image default `fmnist-text`: Fashion-MNIST captions from templates, a
word-level BPE for them, and an open_clip model (its own classes, tokenizer and contrastive loss) that scores
and conditions 32x32 Fashion-MNIST images.

Captions: a template ("a photo of a {}") filled with one of a few names of the image's class ("sneaker",
"trainer", "running shoe"). `TRAIN_TEMPLATES` are what the CLIP and the Dash learn from; `HELDOUT_TEMPLATES`
only ever caption evaluation prompts (zero-shot accuracy, the task's default prompts). Held-out templates reuse
the training words in new sentences: a word the CLIP never read has an untrained embedding, which would
measure the tokenizer, not generalisation to new phrasing.

Tokenizer: open_clip's `SimpleTokenizer` with our own merges file (`fmnist_clip_bpe.txt.gz`, learnt by
`learn_bpe` from the caption words), because its stock 49,408-token vocabulary would make the token
embedding alone ~12 MB at width 64, most of the embedded weights' budget, for ~60 distinct words.
"""

import collections
import gzip
import json
import re
import tempfile
from functools import cache
from pathlib import Path

import torch

from baselines.tasks.data import CLASSES

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
CLIP_NAME = "fmnist-clip"
CLIP_PATH = WEIGHTS / "fmnist_clip.safetensors"
BPE_PATH = WEIGHTS / "fmnist_clip_bpe.txt.gz"

# A few names per class (index = Fashion-MNIST label); the first is the one prompts use by default.
NAMES = (
    ("t-shirt", "tee", "top"),
    ("trousers", "pants", "slacks"),
    ("pullover", "sweater", "jumper"),
    ("dress", "gown", "frock"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "flip-flop", "summer sandal"),
    ("shirt", "blouse", "button-up shirt"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "bootie"),
)
assert len(NAMES) == len(CLASSES)

TRAIN_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a {}",
    "a grayscale photo of a {}",
    "a small photo of a {}",
    "a low resolution photo of a {}",
    "a product photo of the {}",
    "a close-up photo of the {}",
    "a blurry picture of the {}",
    "a black and white image of a {}",
    "this is a {}",
)
HELDOUT_TEMPLATES = (
    "a black and white photo of the {}",
    "a close-up picture of a {}",
    "this is a small image of the {}",
)
CONTEXT_LENGTH = 16

# open_clip model config: a ViT on 32x32 grey images expanded to RGB (patch 4: 64 tokens) and a 2-layer text
# transformer; embed_dim 64. ~0.45M parameters.
VISION_CFG = dict(image_size=32, patch_size=4, width=96, layers=4, head_width=32, mlp_ratio=2.0)
TEXT_CFG = dict(context_length=CONTEXT_LENGTH, width=64, heads=4, layers=2, mlp_ratio=2.0)
EMBED_DIM = 64


def caption(template: str, name: str) -> str:
    article = "an" if name[0] in "aeiou" else "a"
    return re.sub(r"\ba \{\}", article + " {}", template).format(name)


def captions(templates=TRAIN_TEMPLATES, label: int | None = None) -> list[tuple[str, int]]:
    """(caption, label) for every template x name of every class (or of `label`)."""
    labels = range(len(NAMES)) if label is None else [label]
    return [(caption(t, n), c) for c in labels for n in NAMES[c] for t in templates]


def default_prompts() -> list[str]:
    """The task's evaluation prompts, all from held-out templates: prompt k is of class k mod 10, so any 10
    consecutive seeds cover every class once (seed s gets prompt s mod their count)."""
    return [caption(t, NAMES[c][n % len(NAMES[c])]) for n, t in
            ((n, t) for t in HELDOUT_TEMPLATES for n in range(3)) for c in range(len(NAMES))]


def class_of(prompt: str) -> int:
    """The class a prompt names (the longest class name it contains), for checking samples against it."""
    hits = [(len(n), c) for c, names in enumerate(NAMES) for n in names if f" {n}" in f" {prompt}"]
    if not hits:
        raise ValueError(f"prompt {prompt!r} names no Fashion-MNIST class ({', '.join(n[0] for n in NAMES)})")
    return max(hits)[1]


def learn_bpe(words) -> list[tuple[str, str]]:
    """BPE merges (most frequent pair first) until every caption word is one token. Written by hand because
    open_clip ships a tokenizer but no trainer, and `tokenizers` writes a different merges format."""
    from open_clip.tokenizer import bytes_to_unicode

    enc = bytes_to_unicode()
    vocab = collections.Counter(words)
    split = {w: tuple(enc[b] for b in w.encode()[:-1]) + (enc[w.encode()[-1]] + "</w>",) for w in vocab}
    merges = []
    while True:
        pairs = collections.Counter()
        for w, parts in split.items():
            for a, b in zip(parts, parts[1:]):
                pairs[a, b] += vocab[w]
        if not pairs:
            return merges
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        for w, parts in split.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            split[w] = tuple(out)


def caption_words() -> list[str]:
    """The words SimpleTokenizer splits every caption into: its own cleaning and word pattern (of the stock
    tokenizer, which has the same ones as ours)."""
    from open_clip.tokenizer import SimpleTokenizer

    stock = SimpleTokenizer()
    text = [c for c, _ in captions(TRAIN_TEMPLATES + HELDOUT_TEMPLATES)]
    return [w for t in text for w in stock.pat.findall(stock.clean_fn(t))]


def write_bpe(path: Path = BPE_PATH) -> Path:
    merges = learn_bpe(caption_words())
    text = "\n".join(["#version: fmnist-clip"] + [f"{a} {b}" for a, b in merges])
    path.write_bytes(gzip.compress(text.encode(), mtime=0))  # mtime 0: the same bytes on every rebuild
    return path


def vocab_size(bpe_path: Path = BPE_PATH) -> int:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(bpe_path=str(bpe_path)).vocab_size


def model_config(bpe_path: Path = BPE_PATH) -> dict:
    text = dict(TEXT_CFG, vocab_size=vocab_size(bpe_path), tokenizer_kwargs=dict(bpe_path=str(bpe_path)))
    return dict(embed_dim=EMBED_DIM, vision_cfg=dict(VISION_CFG), text_cfg=text)


@cache
def register(bpe_path: Path = BPE_PATH) -> str:
    """Make `fmnist-clip` an open_clip model name (create_model, get_tokenizer), so CLIP score loads it like any
    other: open_clip reads model configs only from files, and ours names the merges file by its absolute path."""
    import open_clip

    # open_clip parses the file when it is added and keeps the parsed config, so the folder can go at once.
    with tempfile.TemporaryDirectory(prefix="fmnist-clip-") as folder:
        (Path(folder) / f"{CLIP_NAME}.json").write_text(json.dumps(model_config(Path(bpe_path))))
        open_clip.add_model_config(folder)
    return CLIP_NAME


def build(pretrained: Path | None = None):
    """(model, tokenizer): the fmnist CLIP, random or loaded from a safetensors file."""
    import open_clip

    name = register()
    model = open_clip.create_model(name, pretrained=str(pretrained) if pretrained else None,
                                   require_pretrained=pretrained is not None)
    return model, open_clip.get_tokenizer(name)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (N, 1, 32, 32) -> the model's input, exactly as evaluate's CLIP scorer prepares an image of the
    model's size (no resize): grey expanded to RGB, OpenAI mean/std."""
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return (((images + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1) - mean) / std


def token_features(model, tokens: torch.Tensor) -> torch.Tensor:
    """The text transformer's per-token hidden states after its final LayerNorm, (B, context, width): what
    the text-conditional Dash cross-attends to (open_clip's encode_text pools them to one vector)."""
    x = model.token_embedding(tokens) + model.positional_embedding
    return model.ln_final(model.transformer(x, attn_mask=model.attn_mask))


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images, labels, templates=HELDOUT_TEMPLATES, batch_size=500) -> float:
    """Fraction of images whose nearest class text embedding (mean over `templates` x names, normalised, as in
    CLIP's zero-shot protocol) is their own class."""
    model.eval()
    heads = []
    for c in range(len(NAMES)):
        emb = model.encode_text(tokenizer([t for t, _ in captions(templates, c)]), normalize=True)
        heads.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
    heads = torch.stack(heads)
    right = 0
    for k in range(0, len(images), batch_size):
        img = model.encode_image(normalize(images[k:k + batch_size]), normalize=True)
        right += int(((img @ heads.T).argmax(1) == labels[k:k + batch_size]).sum())
    return right / len(images)
