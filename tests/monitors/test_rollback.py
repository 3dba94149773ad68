"""Rollback, also from inside a step (after advance()), leaves the cache as a fresh run would; traces
stay exact across rollbacks."""

from __future__ import annotations

import torch

import decodekit
from decodekit.loop import prefill
from decodekit.monitors import ROLLBACK, Record, Verdict
from decodekit.strategies.greedy import Greedy


def _valid_keys(lm, state, row):
    """[layers, heads, tokens, dim] keys of the row's valid cache columns."""
    cols = state.attention_mask[row].bool()
    return torch.stack([layer.keys[row][:, cols] for layer in state.cache.layers])


def test_rollback_after_advance_equals_fresh_run(tiny_lm):
    prompts = [tiny_lm.tokenizer("hello").input_ids, tiny_lm.tokenizer("a").input_ids]
    greedy = Greedy()
    state = greedy.init(prefill(tiny_lm, prompts, 12, None, ()))
    for _ in range(7):
        state.append(greedy.step(state))
    state.advance()  # inside a step: every generated token is in the cache, nothing pending
    assert state.pending is None
    state.rollback(torch.tensor([4, 0]))
    assert state.n_new.tolist() == [3, 7] and state.pending is not None
    while int(state.n_new.min()) < 12:
        out = greedy.step(state)
        out.count = (state.n_new < 12).long()
        state.append(out)
    fresh = decodekit.generate(tiny_lm, prompts, max_new_tokens=12)
    assert [state.tokens_of(r) for r in range(2)] == fresh.token_ids
    for r, p in enumerate(prompts):  # the cache holds prompt + tokens but the pending one
        seq = p + fresh.token_ids[r][:-1]
        ref = _valid_keys(tiny_lm, prefill(tiny_lm, [seq], 1, None, ()), 0)
        got = _valid_keys(tiny_lm, state, r)  # row 1 finished first: later steps re-fed its last token
        assert got.shape[2] == len(seq) + (4 if r == 1 else 0)
        torch.testing.assert_close(got[:, :, : len(seq)], ref, rtol=1e-5, atol=1e-5)


class RollbackAt:
    name = "rollback_at"

    def __init__(self, step, n):
        self.step, self.n = step, n

    def observe(self, state, out):
        hit = torch.full((state.rows,), state.steps == self.step)
        return Verdict.where(hit, ROLLBACK, self.n)


def test_traces_stay_exact_across_rollbacks(tiny_lm):
    prompts = ["one two", "x"]
    gen = decodekit.generate(tiny_lm, prompts, "sample", max_new_tokens=14, seed=1,
                             monitors=[Record(("entropy", "smoothed_entropy", "logprob")), RollbackAt(9, 5)])
    assert [f.action for f in gen.flags] == ["rollback", "rollback"]
    for p, trace in zip(prompts, gen.traces):
        ids = tiny_lm.tokenizer(p).input_ids
        with torch.no_grad():
            logits = tiny_lm.model(torch.tensor([ids + trace.token_ids])).logits[0, len(ids) - 1: -1]
        logp = torch.log_softmax(logits.float(), -1)
        h = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(torch.tensor(trace.signals["entropy"]), h, rtol=1e-4, atol=1e-4)
        smooth = torch.tensor([h[max(0, i - 4): i + 1].mean() for i in range(len(h))])
        torch.testing.assert_close(torch.tensor(trace.signals["smoothed_entropy"]), smooth, rtol=1e-4, atol=1e-4)
        lp = logp.gather(1, torch.tensor(trace.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(trace.signals["logprob"]), lp, rtol=1e-4, atol=1e-4)
