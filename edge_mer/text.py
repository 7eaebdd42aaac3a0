"""MiniLM tokenisation for the text encoder, torch-free (the ``tokenizers`` library).

The bundle ships the tokenizer it was trained with (``encoders.text.tokenizer``); this module
turns a window's words into ``input_ids`` / ``attention_mask`` (int64, ``[1, tokens]``). When the
words exceed ``max_tokens`` the oldest are cut (``text.max_tokens``: a window is about what was
said last), and the special tokens ([CLS] ... [SEP]) are always kept.

>>> tok = TextTokenizer.from_file("models/default/text/tokenizer.json", 64)   # doctest: +SKIP
>>> feeds = tok.encode("don't forget a jacket")                               # doctest: +SKIP
>>> feeds["input_ids"].shape, feeds["input_ids"].dtype                        # doctest: +SKIP
((1, 8), dtype('int64'))
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_mer.errors import BundleError


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the bundle's vocabulary, truncating from the left.

    >>> tok = TextTokenizer.from_file("tokenizer.json", max_tokens=16)   # doctest: +SKIP
    >>> tok.encode("hello there")["attention_mask"]                      # doctest: +SKIP
    array([[1, 1, 1, 1]])
    """

    def __init__(self, tokenizer, max_tokens: int) -> None:
        self._tok = tokenizer
        self._specials = tokenizer.num_special_tokens_to_add(False)
        if max_tokens <= self._specials:
            raise ValueError(f"text.max_tokens={max_tokens} leaves no room beside {self._specials} special tokens")
        self.max_tokens = max_tokens
        # Truncation and padding happen here, per window; the file's own settings would pad to 128.
        self._tok.no_truncation()
        self._tok.no_padding()

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_tokens: int) -> "TextTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: tokenizer file not found")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception for a malformed file
            raise BundleError(f"{path}: not a tokenizers JSON file ({' '.join(str(exc).split())[:160]})") from None
        return cls(tok, max_tokens)

    def encode(self, text: str) -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask"}`` int64 ``[1, n]`` with ``n <= max_tokens``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        # direction="left" drops tokens from the start: the oldest words go first.
        enc.truncate(self.max_tokens - self._specials, direction="left")
        enc = self._tok.post_process(enc)
        ids = np.asarray([enc.ids], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.asarray([enc.attention_mask], dtype=np.int64)}
