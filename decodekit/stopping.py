"""Per-row stopping: EOS ids, max new tokens (and the model context), stop strings, HF criteria.

Token-level checks (EOS, length) run on the device on the step's tokens before they are appended:
a row keeps the tokens up to and including its first EOS, and never more than its limit; with these
alone, no step needs a host sync (finish reasons stay on the device until read). Stop strings
need text, so they are checked on the host, only for rows that still run and only when given, on
the text of each row's last tokens only (``STOP_WINDOW`` plus the longest stop string's length in
tokens: a step adds at most that many, and a token decodes to at least one character), so the
check costs the same at every length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decodekit.state import FINISH_CODES, DecodeState, StepOutput
from decodekit.transfer import to_device

__all__ = ["Stopping", "STOP_WINDOW"]

STOP_WINDOW = 64  # tokens one step may add (speculative steps add up to max_draft_tokens + 1)
_EOS, _LENGTH = FINISH_CODES.index("eos"), FINISH_CODES.index("length")


@dataclass
class Stopping:
    """Stopping rules for one generate call.

    Args:
        eos_token_ids: token ids that end a row (kept in the output, like transformers).
        stop_strings: a row stops once its generated text contains one of them (the text keeps it).
        criteria: extra callables ``(state) -> [rows] bool`` (e.g. adapted HF StoppingCriteria).
    """

    eos_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    criteria: Sequence = ()
    _eos: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        for s in self.stop_strings:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        for t in self.eos_token_ids:
            if not isinstance(t, int) or t < 0:
                raise ValueError(f"eos_token_id must be non-negative ints, got {t!r}")

    def clip(self, state: DecodeState, out: StepOutput) -> StepOutput:
        """Cut each row's new tokens at its first EOS and at its length limit; done rows gain none."""
        n = out.tokens.shape[1]
        if n == 1:
            return self._clip_one(state, out)
        pos = torch.arange(n, device=out.tokens.device)[None, :]  # [1, n]
        count = torch.where(state.done, torch.zeros_like(out.count), out.count)  # [rows]
        room = (state.limit - state.n_new).clamp_min(0)  # [rows]
        count = torch.minimum(count, room)
        if self.eos_token_ids:
            is_eos = torch.isin(out.tokens, self._eos_on(out.tokens.device)) & (pos < count[:, None])  # [rows, n]
            first = torch.where(is_eos, pos, n).min(1).values  # [rows]
            count = torch.minimum(count, first + 1)
            hit_eos = is_eos.any(1)
        else:
            hit_eos = torch.zeros_like(state.done)
        out.count = count
        state.extra["_hit_eos"] = hit_eos
        return out

    def _clip_one(self, state: DecodeState, out: StepOutput) -> StepOutput:
        """``clip`` for steps of at most one token per row (greedy, sampling): fewer small ops, as it
        runs once per decoded token. Same result as the general case."""
        keep = (out.count > 0) & ~state.done & (state.n_new < state.limit)  # [rows] bool
        out.count = keep.long()  # [rows]
        if self.eos_token_ids:
            eos = self._eos_on(out.tokens.device)
            state.extra["_hit_eos"] = torch.isin(out.tokens[:, 0], eos) & keep  # [rows]
        else:
            state.extra["_hit_eos"] = torch.zeros_like(state.done)
        return out

    def _eos_on(self, device: torch.device) -> torch.Tensor:
        if self._eos is None or self._eos.device != device:
            self._eos = to_device(list(self.eos_token_ids), device, torch.long)
        return self._eos  # [n_eos] long

    def update(self, state: DecodeState) -> None:
        """After the tokens are appended: mark rows done (EOS, length, stop strings, criteria).

        With EOS and length only, no host sync: rows are marked on the device
        (:meth:`~decodekit.state.DecodeState.mark_done`) and their reasons named when read."""
        hit_eos = state.extra.pop("_hit_eos", None)  # [rows] bool
        hit_eos = torch.zeros_like(state.done) if hit_eos is None else hit_eos
        at_limit = state.n_new >= state.limit  # [rows] bool
        newly = ~state.done & (hit_eos | at_limit)  # [rows] bool
        if not self.stop_strings and not self.criteria:
            state.mark_done(newly, torch.where(hit_eos, _EOS, _LENGTH))
            return
        if self.stop_strings:
            newly = newly | (~state.done & self._stop_string_rows(state))
        for crit in self.criteria:
            newly = newly | (~state.done & crit(state).to(state.done.device))
        if bool(newly.any()):
            for r in torch.nonzero(newly).flatten().tolist():
                state.finish[r] = self._reason(state, r, bool(hit_eos[r]), bool(at_limit[r]))
        state.done = state.done | newly

    def _stop_string_rows(self, state: DecodeState) -> torch.Tensor:
        hits = torch.zeros_like(state.done)
        window = STOP_WINDOW + max(len(s) for s in self.stop_strings)  # tokens
        for r in torch.nonzero(~state.done).flatten().tolist():
            text = state.lm.decode(state.tokens_of(r, last=window))
            if any(s in text for s in self.stop_strings):
                hits[r] = True
        return hits

    def _reason(self, state: DecodeState, r: int, eos: bool, limit: bool) -> str:
        if eos:
            return "eos"
        if self.stop_strings and any(s in state.lm.decode(state.tokens_of(r)) for s in self.stop_strings):
            return "stop_string"
        return "length" if limit else "criteria"
