"""Counts in words, for the lines a user reads: `plural(1, "epoch")` is "1 epoch", `plural(3, "epoch")`
"3 epochs"."""

from __future__ import annotations


def plural(count: int, word: str, words: str | None = None) -> str:
    """'1 step', '18 steps'; `words`: the plural when it is not `word` + 's' ('1 class', '2 classes')."""
    return f"{count} {word if count == 1 else words or word + 's'}"
