"""Test helpers: a random-token proposer strategy and a manual loop that exposes the final state."""

from __future__ import annotations

import torch

import decodekit
from decodekit.loop import prefill
from decodekit.stopping import Stopping
from decodekit.strategies.speculative import Draft, DraftVerify, DraftVerifyConfig
from tests.toy import tiny_lm


class RandomProposer:
    """Proposes uniformly random tokens (its own seeded generator); verified as deterministic drafts."""

    gives_probs = False

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def start(self, state):
        pass

    def propose(self, state, k, ctx):
        tokens = torch.randint(0, state.lm.vocab_size, (state.rows, k), generator=self.gen)  # [rows, k]
        count = torch.randint(0, k + 1, (state.rows,), generator=self.gen)  # [rows] ragged drafts
        return Draft(tokens, count)

    def accepted(self, state, draft, accepted):
        pass


class RandomDraft(DraftVerify):
    """Draft-verify with random proposals (not registered: the base class is the extension point)."""

    name = "random_draft"
    Config = DraftVerifyConfig

    def make_proposer(self, state):
        return RandomProposer()


def run_steps(lm, strategy, prompts, max_new_tokens, eos=None):
    """The loop's core (prefill, init, step/clip/append/update) returning the final DecodeState."""
    token_lists = decodekit.api.encode_prompts(lm, prompts, chat=False)
    state = prefill(lm, token_lists, max_new_tokens, None, ())
    state = strategy.init(state)
    stopping = Stopping(lm.eos_token_ids if eos is None else eos)
    while not bool(state.done.all()):
        state.append(stopping.clip(state, strategy.step(state)))
        stopping.update(state)
        check_cache_invariant(state)
    return state


def check_cache_invariant(state) -> None:
    """Each row's cache holds all its tokens but the pending one, in order, and nothing else."""
    held = state.attention_mask.sum(1)  # [rows]
    total = state.end - state.start  # [rows]
    assert held.tolist() == (total - 1).tolist(), (held.tolist(), total.tolist())
    assert state.attention_mask.shape[1] == state.lm.cache_length(state.cache)
    last = state.ids.gather(1, (state.end - 1)[:, None])[:, 0]
    assert state.pending.tolist() == last.tolist()


def check_cache_content(state, atol: float = 1e-4) -> None:
    """Feeding the pending tokens to the state's cache gives the logits of a fresh run of each row."""
    lm = state.lm
    mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(state.rows, 1)], 1)
    got = lm.forward(state.pending[:, None], lm.copy_cache(state.cache), mask).logits[:, -1]  # [rows, V]
    for r in range(state.rows):
        ids = state.ids[r, int(state.start[r]): int(state.end[r])][None]  # [1, n]
        want = lm.forward(ids, lm.new_cache(), torch.ones_like(ids)).logits[0, -1]  # [V]
        torch.testing.assert_close(got[r], want, atol=atol, rtol=1e-4)


def lm_without_4d_masks(mode: str) -> decodekit.LM:
    """A tiny LM whose model refuses 4-D masks (``raise``) or silently uses a causal mask (``ignore``).

    The decoder body is patched (``model.model``), which every forward reaches, also the CPU
    small-batch head of :mod:`decodekit.cpu_head`."""
    lm = tiny_lm()
    body = lm.model.model
    original = body.forward

    def forward(*args, attention_mask=None, **kw):
        if attention_mask is not None and attention_mask.dim() == 4:
            if mode == "raise":
                raise ValueError("no 4-D masks here")
            attention_mask = None
        return original(*args, attention_mask=attention_mask, **kw)

    body.forward = forward
    return lm


def sequence_distribution(dist, steps: int, eos: int) -> dict[tuple, float]:
    """Exact probability of every continuation of at most ``steps`` tokens (ending at ``eos`` or at
    the length limit), given ``dist(prefix) -> list of next-token probabilities``."""
    out, frontier = {}, {(): 1.0}
    for _ in range(steps):
        nxt = {}
        for prefix, p in frontier.items():
            for tok, pt in enumerate(dist(prefix)):
                if pt > 0:
                    (out if tok == eos else nxt)[prefix + (tok,)] = p * pt
        frontier = nxt
    out.update(frontier)
    return out
