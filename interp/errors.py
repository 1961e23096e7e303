"""Error types and helpers for messages that say what was wrong and what is valid."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpError(Exception):
    """Base class for errors that are the user's input, not a bug."""


class UnknownNameError(InterpError, KeyError):
    """A model, hook, dataset or SAE name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(InterpError, ValueError):
    """Input data that is empty, malformed or the wrong shape."""


class CorruptArtifactError(InterpError, RuntimeError):
    """An artifact on disk (store, checkpoint, model folder) is missing files or truncated."""


class UsageError(InterpError, ValueError):
    """Flags that do not fit together, or a flag's value in the wrong form."""


class MismatchError(DataError):
    """Artifacts that do not belong together: a dictionary and another model, store or hook,
    or a checkpoint and other settings."""


class OutputError(InterpError, OSError):
    """An output path that cannot be written, or holds something the command does not own."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command had done and how to resume (the CLI exits 130)."""


def closest(name: str, valid: Iterable[str], n: int = 8) -> list[str]:
    """Valid names ordered by similarity to ``name`` (closest first)."""
    valid = list(dict.fromkeys(valid))
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.3)
    rest = [v for v in valid if v not in close and name.lower() in v.lower()]
    return (close + rest)[:n]


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first line, at most ``limit`` characters: how a library's (often
    multi-line) error is quoted inside our one-line messages."""
    return (str(e).strip().splitlines() or [""])[0][:limit]


def unknown(kind: str, name: str, valid: Iterable[str], n: int = 8) -> UnknownNameError:
    valid = list(dict.fromkeys(valid))
    near = closest(name, valid, n)
    hint = f"closest matches: {', '.join(near)}" if near else \
        f"valid: {', '.join(valid[:n])}{' ...' if len(valid) > n else ''}"
    return UnknownNameError(f"unknown {kind} {name!r}; {hint} ({len(valid)} valid in all)")
