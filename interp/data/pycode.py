"""The Python-source corpus: the standard library of the interpreter that runs this code.

File list (deterministic): every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, minus
any path with a component in :data:`EXCLUDED_DIRS` (third-party packages and the test
suites), sorted by relative POSIX path. A file is held out for evaluation when
``zlib.crc32(relpath) % 10 == 0`` (about 10%); the rest is the training split. The shipped
``pycode`` model was trained on CPython 3.11.7's library; its ``config.json`` records the
Python version and a digest of the file list so a different interpreter is detected.

Tokenizer: byte-level BPE (``tokenizers``) with 4096 entries, trained on the training split.
Special tokens: ``<|bos|>`` (0), ``<|endoftext|>`` (1, ends each file), ``<|pad|>`` (2).
"""
from __future__ import annotations

import hashlib
import sys
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp.errors import DataError

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                           "__pycache__"})
BOS_TOKEN, EOT_TOKEN, PAD_TOKEN = "<|bos|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOT_TOKEN, PAD_TOKEN]
VOCAB_SIZE = 4096
HELDOUT_MODULUS = 10


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class SourceFile:
    relpath: str
    path: Path

    @property
    def split(self) -> str:
        return "test" if zlib.crc32(self.relpath.encode()) % HELDOUT_MODULUS == 0 else "train"

    def read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            return None


def corpus_files(split: str | None = None, root: Path | None = None) -> list[SourceFile]:
    """The corpus files, sorted; ``split`` is None (all), "train" or "test"."""
    if split not in (None, "train", "test"):
        raise DataError(f"unknown split {split!r}; valid splits: 'train', 'test' or None")
    root = root or stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if EXCLUDED_DIRS.intersection(rel.parts[:-1]):
            continue
        files.append(SourceFile(rel.as_posix(), path))
    files.sort(key=lambda f: f.relpath)
    if not files:
        raise FileNotFoundError(f"no Python source files found under {root}")
    return [f for f in files if split is None or f.split == split]


def corpus_digest(files: list[SourceFile]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relpath.encode() + b"\0")
        h.update(hashlib.sha256(f.path.read_bytes()).digest())
    return h.hexdigest()[:16]


def corpus_texts(split: str | None = None) -> list[tuple[str, str]]:
    """(relpath, text) for every readable file of ``split``."""
    out = []
    for f in corpus_files(split):
        text = f.read()
        if text is not None and text.strip():
            out.append((f.relpath, text))
    return out


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def train_tokenizer(vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE on the training split (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [t for _, t in corpus_texts("train")]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    if not Path(path).exists():
        raise FileNotFoundError(f"pycode tokenizer not found at {path}")
    return Tokenizer.from_file(str(path))


def save_hf_tokenizer(tokenizer_json: Path, folder: Path) -> None:
    """Write the transformers files beside ``tokenizer.json`` so that TransformerLens
    (which reloads tokenizers by folder name) can use it offline."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token=BOS_TOKEN,
                                  eos_token=EOT_TOKEN, pad_token=PAD_TOKEN,
                                  model_max_length=10**9)
    tok.save_pretrained(str(folder))


def hf_tokenizer(folder: Path):
    """The tokenizer for transformers / TransformerLens (``model.to_tokens``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def encode_corpus(tokenizer, split: str) -> np.ndarray:
    """One token stream for ``split``: each file's tokens followed by ``<|endoftext|>``."""
    eot = tokenizer.token_to_id(EOT_TOKEN)
    texts = [t for _, t in corpus_texts(split)]
    encs = tokenizer.encode_batch(texts)
    parts = []
    for enc in encs:
        parts.append(np.asarray(enc.ids, dtype=np.int32))
        parts.append(np.asarray([eot], dtype=np.int32))
    return np.concatenate(parts)
