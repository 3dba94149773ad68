"""Diversity penalties of diverse beam search (Vijayakumar et al. 2016, arXiv:1610.02424, §4).

Group ``g`` is penalised for resembling the sequences that the earlier groups ``h < g`` produced at
the same step. Each earlier group contributes :class:`Refs`: sequences given as a parent row (its
tokens so far) plus the step's token. Which sequences count is the mode's business (transformers
counts the beams each earlier group kept, fairseq every candidate it scored). A penalty is a
similarity, subtracted as ``diversity_penalty * penalty`` from the group's scores:

* ``hamming``: how often the token was chosen by earlier groups at this step (the paper's best);
* ``cumulative``: ``sum_h exp(-mismatches_h / temperature)``, where ``mismatches_h`` counts, over all
  of group h's sequences and all positions so far, the tokens that differ from the candidate's:
  the penalty backs off once the sequences have diverged;
* ``ngram``: how often the candidate's last n-gram occurs in the earlier groups' sequences (their
  generated part), wherever it occurs.

Example:
    >>> import torch
    >>> refs = [Refs(torch.tensor([[0, 1]]), torch.tensor([[7, 7]]), torch.tensor([[True, True]]))]
    >>> hamming(refs, vocab=9)[0, 0, 7].item()         # token 7 chosen twice by earlier groups
    2.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.state import DecodeState

__all__ = ["Refs", "hamming", "cumulative", "ngram"]


@dataclass(frozen=True)
class Refs:
    """The sequences one earlier group produced at this step, per prompt."""

    parent: torch.Tensor  # [prompts, r] long: row holding each sequence's tokens so far
    token: torch.Tensor  # [prompts, r] long: its token at this step
    valid: torch.Tensor  # [prompts, r] bool: the sequence counts


def hamming(refs: list[Refs], vocab: int) -> torch.Tensor:
    """[prompts, 1, vocab] float32: times each token was chosen by the earlier groups."""
    token = torch.cat([r.token for r in refs], 1)  # [prompts, R]
    valid = torch.cat([r.valid for r in refs], 1)  # [prompts, R]
    counts = torch.zeros(token.shape[0], vocab + 1, device=token.device)  # [prompts, vocab + 1]
    counts.scatter_add_(1, torch.where(valid, token, vocab), torch.ones_like(token, dtype=counts.dtype))
    return counts[:, None, :vocab]


def cumulative(state: DecodeState, refs: list[Refs], rows: torch.Tensor, vocab: int,
               temperature: float) -> torch.Tensor:
    """[prompts, width, vocab] float32: ``sum_h exp(-(mismatches with group h) / temperature)`` for
    each beam of the current group (``rows [prompts, width]``) and each next token."""
    t = state.steps  # tokens generated so far by every live row
    gen = state.ids[:, state.prompt_width: state.prompt_width + t]  # [all rows, t]
    mine = gen[rows]  # [prompts, width, t]
    total = torch.zeros(*rows.shape, vocab, device=rows.device)  # [prompts, width, vocab]
    for r in refs:
        theirs = gen[r.parent]  # [prompts, n, t]
        diff = (mine[:, :, None, :] != theirs[:, None, :, :]).sum(-1)  # [prompts, width, n]
        valid = r.valid[:, None, :]  # [prompts, 1, n]
        past = (diff * valid).sum(-1).float()  # [prompts, width]: mismatches over the prefix
        n_valid = r.valid.sum(-1).float()  # [prompts]
        same = torch.zeros(rows.shape[0], vocab + 1, device=rows.device)  # [prompts, vocab + 1]
        same.scatter_add_(1, torch.where(r.valid, r.token, vocab), torch.ones_like(r.token, dtype=same.dtype))
        # mismatches at this step for next token v: sequences of h whose token is not v
        now = n_valid[:, None] - same[:, :vocab]  # [prompts, vocab]
        total += torch.exp(-(past[..., None] + now[:, None, :]) / temperature)
    return total


def ngram(state: DecodeState, refs: list[Refs], rows: torch.Tensor, vocab: int, n: int) -> torch.Tensor:
    """[prompts, width, vocab] float32: occurrences of (the beam's last ``n - 1`` tokens, token) among
    the n-grams of the earlier groups' sequences that end in their generated part."""
    pw, t = state.prompt_width, state.steps
    parent = torch.cat([r.parent for r in refs], 1)  # [prompts, R]
    token = torch.cat([r.token for r in refs], 1)  # [prompts, R]
    valid = torch.cat([r.valid for r in refs], 1)  # [prompts, R]
    lo = max(pw - (n - 1), 0)
    seq = torch.cat([state.ids[:, lo: pw + t][parent], token[..., None]], -1)  # [prompts, R, L]
    if seq.shape[-1] < n:
        return torch.zeros(*rows.shape, vocab, device=rows.device)
    windows = seq.unfold(-1, n, 1)  # [prompts, R, W, n]
    first = lo + torch.arange(windows.shape[2], device=rows.device)  # [W] position of each window start
    ok = (first + n - 1 >= pw) & (first >= state.start[parent][..., None])  # [prompts, R, W]
    ok = ok & valid[..., None]
    pos = pw + t - (n - 1) + torch.arange(n - 1, device=rows.device)  # [n - 1]
    ctx = state.ids[rows][..., pos.clamp_min(0)]  # [prompts, width, n - 1]
    ctx_ok = (pos.min() >= state.start[rows]) if n > 1 else torch.ones_like(rows, dtype=torch.bool)
    match = (windows[:, None, ..., :-1] == ctx[:, :, None, None, :]).all(-1)  # [prompts, width, R, W]
    match = match & ok[:, None] & ctx_ok[..., None, None]
    last = torch.where(match, windows[:, None, ..., -1], vocab).flatten(2)  # [prompts, width, R * W]
    counts = torch.zeros(*rows.shape, vocab + 1, device=rows.device)  # [prompts, width, vocab + 1]
    counts.scatter_add_(2, last, match.flatten(2).to(counts.dtype))
    return counts[..., :vocab]
