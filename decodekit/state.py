"""The data the loop and the strategies share: DecodeState, StepOutput, and the Generation result.

Layout of a decode: every row (a prompt, or a beam of a prompt) owns

* ``ids[r]``: its left-padded prompt in columns ``[0, prompt_width)`` followed by its generated tokens;
  its tokens are ``ids[r, start[r] : prompt_width + n_new[r]]``;
* its columns of the KV cache, marked by ``attention_mask[r]`` (holes are allowed);
* at most one *pending* token: the last generated token, not yet in the cache. A step first feeds the
  pending tokens (``advance``), then chooses the next ones. Rolling back is therefore just masking
  cache columns and re-pending an earlier token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from decodekit.processors import History

__all__ = ["DecodeState", "StepOutput", "Candidate", "Stats", "Flag", "Trace", "Generation", "FINISH_CODES"]

FINISH_CODES = ("", "eos", "length", "beam_done")  # finish reasons that DecodeState.mark_done records on the device


@dataclass
class StepOutput:
    """What one strategy step produced. Each row gains ``count[r]`` tokens (0..n)."""

    tokens: torch.Tensor  # [rows, n] long, valid up to count
    count: torch.Tensor  # [rows] long
    logprobs: torch.Tensor  # [rows, n] float32: model log-prob of each token (raw distribution)
    logits: torch.Tensor | None = None  # [rows, n, vocab] raw logits each token was chosen from
    # [rows] long: how many of the row's first tokens the step already wrote into the cache (as the
    # row's newest columns; a verify step writes its accepted drafts). ``append`` masks the columns of
    # those the loop then clipped away (EOS, length), so the cache still holds all but the pending token.
    cached: torch.Tensor | None = None

    @staticmethod
    def single(tokens: torch.Tensor, logits: torch.Tensor, logprobs: torch.Tensor | None = None) -> "StepOutput":
        """One token per row (``tokens [rows]``) chosen from ``logits [rows, vocab]``; ``logprobs
        [rows, 1]`` where the caller has them already (else from ``log_softmax``)."""
        if logprobs is None:
            logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[:, None])  # [rows, 1]
        count = torch.ones_like(tokens)
        return StepOutput(tokens[:, None], count, logprobs, logits[:, None, :])


@dataclass
class DecodeState:
    """Everything about a decode in progress. The loop owns it; strategies read and advance it."""

    lm: Any  # decodekit.lm.LM
    cache: Any  # transformers Cache
    attention_mask: torch.Tensor  # [rows, S] long: which cache columns belong to each row
    next_logits: torch.Tensor  # [rows, vocab] float32: logits for each row's next token
    ids: torch.Tensor  # [rows, prompt_width + max_new_tokens] long
    start: torch.Tensor  # [rows] long: first real prompt column of each row
    prompt_width: int
    n_new: torch.Tensor  # [rows] long: tokens generated so far
    limit: torch.Tensor  # [rows] long: most tokens each row may generate
    logprobs: torch.Tensor  # [rows, max_new_tokens] float32: model log-prob of each generated token
    done: torch.Tensor  # [rows] bool
    finish: list[str]  # [rows] why each row stopped ("" while running); see ``mark_done``
    prompt_of_row: torch.Tensor  # [rows] long: which prompt a row decodes
    generator: torch.Generator | None
    user_processors: tuple = ()  # extra logits processors from the caller (HF adapters ...)
    pending: torch.Tensor | None = None  # [rows] long: last token of each row, not yet in the cache
    stopping: Any = None  # the loop's Stopping rules: strategies that choose among candidates
    #                       (beams) check them before a candidate becomes a row's token
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-owned data and stats
    traces: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [rows, max_new_tokens] float32
    # per-token signal values by generated position (monitors, strategies); rollback-safe, in the result
    finish_codes: torch.Tensor | None = field(default=None, repr=False)  # [rows] long: reasons that
    # ``mark_done`` recorded on the device (index into FINISH_CODES, 0 = none), not yet in ``finish``
    # once finished rows have left the batch (decodekit.compaction): [rows] long, each row's row in the
    # batch the decode began with (``batch_rows`` of them); None while every row is still there
    origin: torch.Tensor | None = None
    batch_rows: int = 0

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def draw_rows(self) -> tuple[int, torch.Tensor] | None:
        """``(batch_rows, origin)`` once finished rows have left the batch, else None: random draws
        are made for the whole original batch and these rows taken from them, so a row's draws do
        not depend on which other rows are still decoding (see ``sample_from_logits``)."""
        return None if self.origin is None else (self.batch_rows, self.origin)

    @property
    def end(self) -> torch.Tensor:  # [rows] long: one past each row's last token in ids
        return self.prompt_width + self.n_new

    def history(self) -> History:
        """Prompt + generated tokens of every row, for logits processors."""
        return History(self.ids, self.start, self.end)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the caller's processors (if any) to ``logits [rows, vocab]``."""
        if not self.user_processors:
            return logits
        history = self.history()
        for proc in self.user_processors:
            logits = proc(logits, history)
        return logits

    # ------------------------------------------------------------------ cache advance
    def advance(self) -> torch.Tensor:
        """Feed the pending tokens (if any); return ``next_logits [rows, vocab]``."""
        if self.pending is not None:
            mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(self.rows, 1)], 1)
            out = self.lm.forward(self.pending[:, None], self.cache, mask)
            self.attention_mask = mask
            self.next_logits = out.logits[:, -1]
            self.pending = None
        return self.next_logits

    # ------------------------------------------------------------------ bookkeeping
    def mark_done(self, newly: torch.Tensor, reason: torch.Tensor) -> None:
        """Mark rows ``newly [rows] bool`` (running ones) done for ``reason [rows] long`` (codes into
        ``FINISH_CODES``) without a host sync: the names reach ``finish`` when it is next read."""
        codes = self.finish_codes if self.finish_codes is not None else torch.zeros_like(reason)
        self.finish_codes = torch.where(newly, reason, codes)  # [rows]
        self.done = self.done | newly

    def append(self, out: StepOutput) -> None:
        """Write each row's ``out.count`` new tokens after its generated ones; they become pending.

        Strategies whose step leaves tokens pending set ``pending`` themselves when they return
        several tokens (the last is pending, the earlier ones must already be in the cache).
        """
        n = out.tokens.shape[1]
        if n == 1 and out.cached is None:
            return self._append_one(out)
        cols = self.prompt_width + self.n_new[:, None] + torch.arange(n, device=self.ids.device)  # [rows, n]
        valid = torch.arange(n, device=self.ids.device)[None, :] < out.count[:, None]  # [rows, n]
        # clipped slots rewrite the row's new last column with its final value (no scatter collisions)
        anchor = (self.prompt_width + self.n_new + out.count - 1)[:, None]  # [rows, 1]
        cols = torch.where(valid, cols, anchor)
        at = (out.count - 1).clamp_min(0)[:, None]  # [rows, 1]
        has = out.count[:, None] > 0  # [rows, 1]
        fill = torch.where(has, out.tokens.gather(1, at), self.ids.gather(1, anchor))  # [rows, 1]
        self.ids.scatter_(1, cols, torch.where(valid, out.tokens, fill))
        lp_cols, lp_anchor = (cols - self.prompt_width).clamp_min(0), (anchor - self.prompt_width).clamp_min(0)
        lp_fill = torch.where(has, out.logprobs.gather(1, at), self.logprobs.gather(1, lp_anchor))  # [rows, 1]
        self.logprobs.scatter_(1, lp_cols, torch.where(valid, out.logprobs, lp_fill))
        last = out.tokens.gather(1, at)[:, 0]  # [rows]
        if self.pending is None:
            self.pending = last
        else:
            self.pending = torch.where(out.count > 0, last, self.pending)
        self.n_new = self.n_new + out.count
        if out.cached is not None:  # cached tokens beyond the new pending one were clipped: unmask
            drop = (out.cached - (out.count - 1).clamp_min(0)).clamp_min(0)  # [rows]
            right = self.attention_mask.flip(-1).cumsum(-1).flip(-1)  # [rows, S] valid columns at or after
            self.attention_mask = self.attention_mask.masked_fill(
                (self.attention_mask > 0) & (right <= drop[:, None]), 0)

    def _append_one(self, out: StepOutput) -> None:
        """``append`` for steps of at most one token per row (greedy, sampling): the same result
        in half the small ops, as it runs once per decoded token (on CUDA each op costs host time)."""
        keep = out.count > 0  # [rows]
        col = (self.n_new + out.count + (self.prompt_width - 1))[:, None]  # [rows, 1]: new column, or the last kept
        self.ids.scatter_(1, col, torch.where(keep[:, None], out.tokens, self.ids.gather(1, col)))
        lp_col = (col - self.prompt_width).clamp_min(0)  # [rows, 1]
        self.logprobs.scatter_(1, lp_col, torch.where(keep[:, None], out.logprobs, self.logprobs.gather(1, lp_col)))
        last = out.tokens[:, 0]  # [rows]
        self.pending = last if self.pending is None else torch.where(keep, last, self.pending)
        self.n_new = self.n_new + out.count

    def rollback(self, n: torch.Tensor) -> None:
        """Remove the last ``n[r]`` generated tokens of each row ([rows] long, clamped to n_new).

        Afterwards the cache of each rolled-back row holds exactly its first tokens up to the new
        last one, which becomes pending again: the continuation equals a fresh run from the prefix.
        """
        n = torch.minimum(n.clamp_min(0), self.n_new)
        if not bool((n > 0).any()):
            return
        # the cache holds every token but the pending one: mask the n newest columns of the row
        # (n - 1 rolled-back tokens and the token that becomes pending again). Inside a step, after
        # advance(), nothing is pending: every row then re-pends its last kept token (one more column).
        cols = n if self.pending is not None else n + 1  # [rows]
        right = self.attention_mask.flip(-1).cumsum(-1).flip(-1)  # [rows, S] valid columns at or after
        drop = (self.attention_mask > 0) & (right <= cols[:, None])
        self.attention_mask = self.attention_mask.masked_fill(drop, 0)
        self.n_new = self.n_new - n
        last = self.ids.gather(1, (self.end - 1)[:, None])[:, 0]  # [rows]
        self.pending = last if self.pending is None else torch.where(n > 0, last, self.pending)
        self.done = self.done & (n == 0)
        for r in torch.nonzero(n > 0).flatten().tolist():
            self.finish[r] = ""
        self.trim()

    def trim(self) -> None:
        """Crop cache columns that no row uses any more (all rows masked at the end)."""
        used = self.attention_mask.any(0)  # [S]
        keep = int(used.nonzero().max()) + 1 if bool(used.any()) else 0
        if keep < self.attention_mask.shape[1]:
            self.lm.crop(self.cache, keep)
            self.attention_mask = self.attention_mask[:, :keep]

    def select_rows(self, index: torch.Tensor) -> None:
        """Make row i a copy of old row ``index[i]`` ([rows'] long): beams, row expansion, finished
        rows leaving the batch (:mod:`decodekit.compaction`)."""
        self.lm.select_rows(self.cache, index)
        for name in ("attention_mask", "next_logits", "ids", "start", "n_new", "limit", "logprobs",
                     "done", "prompt_of_row"):
            setattr(self, name, getattr(self, name).index_select(0, index))
        if self.pending is not None:
            self.pending = self.pending.index_select(0, index)
        if self.origin is not None:
            self.origin = self.origin.index_select(0, index)
        if isinstance(self.extra.get("switch"), torch.Tensor):  # the monitors' SWITCH rows ([rows] bool)
            self.extra["switch"] = self.extra["switch"].index_select(0, index)
        self.traces = {k: v.index_select(0, index) for k, v in self.traces.items()}
        self.finish = [self.finish[i] for i in index.tolist()]

    def tokens_of(self, row: int, last: int | None = None) -> list[int]:
        """Generated tokens of one row (host copy); with ``last``, only the last ``last`` of them."""
        end = self.prompt_width + int(self.n_new[row])
        start = self.prompt_width if last is None else max(self.prompt_width, end - last)
        return self.ids[row, start:end].tolist()

    def logprobs_of(self, row: int) -> list[float]:
        return self.logprobs[row, : int(self.n_new[row])].tolist()


def _get_finish(self: DecodeState) -> list[str]:
    """``DecodeState.finish``: copies in the reasons ``mark_done`` recorded on the device first (one
    host sync, then none until a row is marked again), so every reader sees them."""
    names = self.__dict__["_finish"]
    if self.finish_codes is not None:
        codes, self.finish_codes = self.finish_codes.tolist(), None
        for r, code in enumerate(codes):
            if code:
                names[r] = FINISH_CODES[code]
    return names


def _set_finish(self: DecodeState, names: list[str]) -> None:
    self.__dict__["_finish"] = names  # replaces every reason, those still on the device too
    self.finish_codes = None


# a property over the dataclass field (the generated __init__ assigns through it)
DecodeState.finish = property(_get_finish, _set_finish)  # type: ignore[assignment]


@dataclass(frozen=True)
class Candidate:
    """One returned sequence."""

    text: str
    token_ids: list[int]  # new tokens only
    logprobs: list[float]  # model log-prob of each token
    score: float  # the strategy's ranking score (sum of log-probs unless the strategy says otherwise)
    finish_reason: str  # "eos", "stop_string", "length", "monitor"


@dataclass(frozen=True)
class Flag:
    """A monitor's verdict on one row at one step."""

    prompt: int
    step: int
    monitor: str
    action: str  # "flag", "stop", "rollback"
    detail: str = ""


@dataclass(frozen=True)
class Trace:
    """Per-token signal values of one decoded row (monitor signals, strategy decisions)."""

    prompt: int
    row: int
    token_ids: list[int]  # the row's new tokens
    signals: dict[str, list[float]]  # name -> one value per new token


@dataclass
class Stats:
    forward_passes: int = 0
    new_tokens: int = 0
    steps: int = 0
    prefill_time_s: float = 0.0
    wall_time_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"forward_passes": self.forward_passes, "new_tokens": self.new_tokens,
                "steps": self.steps, "prefill_time_s": self.prefill_time_s,
                "wall_time_s": self.wall_time_s, "tokens_per_s": self.tokens_per_s, **self.extra}


@dataclass
class Generation:
    """The result of :func:`decodekit.generate`: per prompt, its returned sequences, best first.

    Example:
        >>> gen = decodekit.generate(lm, ["Hi", "Name a colour."], max_new_tokens=8)  # doctest: +SKIP
        >>> gen.texts            # best text per prompt                                # doctest: +SKIP
        >>> gen.token_ids[0]     # new token ids of prompt 0                           # doctest: +SKIP
        >>> gen.stats.tokens_per_s                                                    # doctest: +SKIP
    """

    strategy: str
    candidates: list[list[Candidate]]  # [prompt][rank]
    stats: Stats
    flags: list[Flag] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)  # one per decoded row, when anything was traced

    @property
    def texts(self) -> list[str]:
        return [c[0].text for c in self.candidates]

    @property
    def text(self) -> str:
        """The text of the only prompt (raises if there were several)."""
        if len(self.candidates) != 1:
            raise ValueError(f"{len(self.candidates)} prompts were generated: use .texts")
        return self.candidates[0][0].text

    @property
    def token_ids(self) -> list[list[int]]:
        return [c[0].token_ids for c in self.candidates]

    @property
    def logprobs(self) -> list[list[float]]:
        return [c[0].logprobs for c in self.candidates]

    @property
    def finish_reasons(self) -> list[str]:
        return [c[0].finish_reason for c in self.candidates]

    def __len__(self) -> int:
        return len(self.candidates)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "outputs": [[c.__dict__ for c in cands] for cands in self.candidates],
            "stats": self.stats.as_dict(),
            "flags": [f.__dict__ for f in self.flags],
            "traces": [t.__dict__ for t in self.traces],
        }
