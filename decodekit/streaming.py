"""Streaming text to a callback as it is produced.

A stream callback is called as ``callback(prompt_index, text_delta)``. Text is emitted only when it
is stable: a trailing incomplete UTF-8 piece is held back. Strategies with several rows per prompt
(beams) emit each prompt's best text once, at the end. If a monitor rolls a row back past text that
was already emitted, ``on_rollback(prompt_index, n_chars)`` is called when the callback object has
it; a plain function then receives the new text after the common prefix.

Example:
    >>> import sys
    >>> gen = decodekit.generate(lm, "Tell me a joke", max_new_tokens=40,           # doctest: +SKIP
    ...                          stream=lambda i, text: sys.stdout.write(text))
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from decodekit.state import Candidate, DecodeState

__all__ = ["Stream"]


class Stream:
    """Turns per-step token growth into text deltas for a callback ``(prompt_index, delta)``."""

    def __init__(self, callback: Callable[[int, str], None]):
        if not callable(callback):
            raise TypeError(f"stream must be callable as stream(prompt_index, text), got {callback!r}")
        self.callback = callback
        self.emitted: dict[int, str] = {}
        self.lengths: dict[int, int] = {}

    def update(self, state: DecodeState) -> None:
        n_new, prompts = torch.stack([state.n_new, state.prompt_of_row]).tolist()  # one host read
        if len(set(prompts)) != len(prompts):
            return  # several rows per prompt: the best text comes at the end
        for r, (n, p) in enumerate(zip(n_new, prompts)):  # rows that finished may have left the batch
            if self.lengths.get(p) != n:
                self.lengths[p] = n
                self._emit(p, state.lm.decode(state.tokens_of(r)), final=False)

    def close(self, state: DecodeState, candidates: list[list[Candidate]]) -> None:
        for p, cands in enumerate(candidates):
            self._emit(p, cands[0].text, final=True)

    def _emit(self, p: int, text: str, final: bool) -> None:
        if not final:
            text = text.rstrip("\ufffd")
        old = self.emitted.get(p, "")
        if not text.startswith(old):
            keep = len(_common_prefix(old, text))
            if hasattr(self.callback, "on_rollback"):
                self.callback.on_rollback(p, len(old) - keep)
            old = old[:keep]
        if len(text) > len(old):
            self.callback(p, text[len(old):])
            self.emitted[p] = text


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
