"""Diverse beam search (Vijayakumar et al. 2016): one group is beam search; no penalty is independent
beam searches; a token chosen k times by earlier groups costs exactly k * lambda; mode "hf" equals
transformers 4.56's group beam search (reference data made by tests/data/make_group_beam_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import decodekit
from decodekit.strategies import diversity
from decodekit.strategies.diverse_beam import DiverseBeam
from tests.strategies.scripted import constant_table, scripted_lm
from tests.strategies.test_beam import TINY_PROMPTS, eos_lm

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "group_beam_reference_4_56.json"
A, B, C = 65, 66, 67  # scripted tokens ("A", "B", "C")


def _run(lm, prompts, strategy, **kw):
    return decodekit.generate(lm, prompts, strategy, **kw).candidates


def _seqs(cands):
    return [[(c.token_ids, c.score) for c in cs] for cs in cands]


# ----------------------------------------------------------------------------- degenerate settings
@pytest.mark.parametrize("es", [False, True, "never"])
@pytest.mark.parametrize("lp", [1.0, 2.0, -1.0])
def test_one_group_is_beam_search(es, lp):
    lm = eos_lm(1)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS]
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=10, length_penalty=lp, early_stopping=es)
    beam = _seqs(_run(lm, prompts, "beam", **kw))
    assert _seqs(_run(lm, prompts, "diverse_beam", num_beam_groups=1, diversity_penalty=0.7, **kw)) == beam
    if es is True:  # transformers 4.56's scorer bounds early stopping differently unless es=True
        hf = _run(lm, prompts, "diverse_beam", num_beam_groups=1, mode="hf", **kw)
        assert [[t for t, _ in cs] for cs in _seqs(hf)] == [[t for t, _ in cs] for cs in beam]


@pytest.mark.parametrize("mode,es", [("paper", False), ("paper", "never"), ("hf", True)])
def test_zero_penalty_is_independent_beam_searches(mode, es):
    lm = eos_lm(2)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS[:3]]
    groups, width = 3, 2
    kw = dict(max_new_tokens=10, early_stopping=es)
    every = _run(lm, prompts, "diverse_beam", num_beams=groups * width, num_beam_groups=groups,
                 diversity_penalty=0.0, num_return_sequences=groups * width, mode=mode, **kw)
    one = _run(lm, prompts, "beam", num_beams=width, num_return_sequences=width, **kw)
    for got, want in zip(every, one):  # each group returned exactly the width-2 beam search
        got, want = sorted((c.score, c.token_ids) for c in got), sorted((c.score, c.token_ids) for c in want * groups)
        assert [t for _, t in got] == [t for _, t in want]
        assert [s for s, _ in got] == pytest.approx([s for s, _ in want], abs=1e-6)  # hf: float64 scores


# ----------------------------------------------------------------------------- the penalty
@pytest.mark.parametrize("mode", ["hf", "paper"])
@pytest.mark.parametrize("lam", [0.05, 0.125, 0.3])
def test_token_chosen_k_times_is_penalised_k_lambda(mode, lam):
    """Every group picks A (its log-prob margin exceeds 3 * lambda): group g's score is lp(A) - g*lam."""
    table = constant_table({A: -0.1, B: -1.5, C: -1.6})
    lm = scripted_lm(table)
    lp_a = table[0, A].item()
    cands = _run(lm, [[70, 71]], "diverse_beam", num_beams=4, num_beam_groups=4, diversity_penalty=lam,
                 mode=mode, num_return_sequences=4, max_new_tokens=1, length_penalty=0.0)[0]
    assert [c.token_ids for c in cands] == [[A]] * 4
    want = [(torch.tensor(lp_a) - k * lam).item() for k in range(4)]  # float32, as computed
    assert [c.score for c in cands] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("mode", ["hf", "paper"])
def test_penalty_accumulates_into_the_score(mode):
    """Two steps, constant table: group 1 pays lambda at both steps."""
    table = constant_table({A: -0.1, B: -1.5, C: -1.6})
    lm = scripted_lm(table)
    lp_a, lam = table[0, A].item(), 0.25
    cands = _run(lm, [[70, 71]], "diverse_beam", num_beams=2, num_beam_groups=2, diversity_penalty=lam,
                 mode=mode, num_return_sequences=2, max_new_tokens=2, length_penalty=0.0)[0]
    assert [c.token_ids for c in cands] == [[A, A], [A, A]]
    assert cands[1].score == pytest.approx(2 * (lp_a - lam), abs=1e-6)
    assert cands[1].logprobs == pytest.approx([lp_a, lp_a], abs=1e-6)  # raw model log-probs


def test_modes_count_different_tokens():
    """hf counts the token each earlier group kept; paper every candidate it scored (2 per beam)."""
    table = constant_table({A: -0.1, B: -0.5, C: -0.55})
    lm = scripted_lm(table)
    common = dict(num_beams=2, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=2,
                  max_new_tokens=1, length_penalty=0.0)
    hf = _run(lm, [[70, 71]], "diverse_beam", mode="hf", **common)[0]
    paper = _run(lm, [[70, 71]], "diverse_beam", mode="paper", **common)[0]
    assert sorted(c.token_ids[0] for c in hf) == [A, B]  # group 2: A costs 1, B (not kept) is free
    assert sorted(c.token_ids[0] for c in paper) == [A, C]  # group 2: A and B (both scored) cost 1


def test_large_penalty_makes_first_tokens_distinct(tiny_lm):
    ids = [tiny_lm.tokenizer.encode("Hello there")]
    for mode in ("hf", "paper"):
        cands = _run(tiny_lm, ids, "diverse_beam", num_beams=4, num_beam_groups=4, diversity_penalty=50.0,
                     mode=mode, num_return_sequences=4, max_new_tokens=4)[0]
        assert len({c.token_ids[0] for c in cands}) == 4


@pytest.mark.parametrize("kind", ["cumulative", "ngram"])
def test_other_diversities_run_and_reduce_to_beam_without_penalty(kind):
    lm = eos_lm(3)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS[:2]]
    kw = dict(num_beams=4, num_beam_groups=2, num_return_sequences=4, max_new_tokens=8, diversity=kind)
    free = _run(lm, prompts, "diverse_beam", diversity_penalty=0.0, **kw)
    assert _seqs(free) == _seqs(_run(lm, prompts, "diverse_beam", diversity_penalty=0.0, diversity="hamming",
                                     **{k: v for k, v in kw.items() if k != "diversity"}))
    penalised = _run(lm, prompts, "diverse_beam", diversity_penalty=2.0, **kw)
    assert _seqs(penalised) != _seqs(free)


# ----------------------------------------------------------------------------- diversity functions
def test_hamming_counts_tokens_of_earlier_groups():
    refs = [diversity.Refs(torch.tensor([[0, 1]]), torch.tensor([[7, 7]]), torch.tensor([[True, True]])),
            diversity.Refs(torch.tensor([[2, 3]]), torch.tensor([[7, 4]]), torch.tensor([[True, False]]))]
    counts = diversity.hamming(refs, vocab=9)  # [1, 1, 9]
    assert counts[0, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 3, 0]


def _state_with(lm, rows: list[list[int]]):
    """A decode state whose rows generated exactly these tokens (prompt [70])."""
    from decodekit.loop import prefill

    state = prefill(lm, [[70]] * len(rows), 8, None, ())
    for r, toks in enumerate(rows):
        state.ids[r, 1: 1 + len(toks)] = torch.tensor(toks)
    state.n_new[:] = len(rows[0])
    state.steps = len(rows[0])
    return state


def test_cumulative_backs_off_with_mismatches():
    lm = scripted_lm(constant_table({A: -0.1}))
    state = _state_with(lm, [[A, B], [A, B], [C, C]])  # rows 0 and 1 agree; row 2 differs twice
    refs = [diversity.Refs(torch.tensor([[1]]), torch.tensor([[A]]), torch.tensor([[True]]))]
    pen = diversity.cumulative(state, refs, torch.tensor([[0, 2]]), vocab=259, temperature=2.0)  # [1, 2, V]
    assert pen[0, 0, A].item() == pytest.approx(1.0)  # identical so far and same token: exp(0)
    assert pen[0, 0, B].item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item())  # 1 mismatch
    assert pen[0, 1, A].item() == pytest.approx(torch.exp(torch.tensor(-1.0)).item())  # 2 earlier mismatches


def test_ngram_counts_earlier_groups_ngrams():
    lm = scripted_lm(constant_table({A: -0.1}))
    state = _state_with(lm, [[A, B], [C, A]])  # current beam row 0 ends in B; earlier group row 1: C A
    refs = [diversity.Refs(torch.tensor([[1]]), torch.tensor([[B]]), torch.tensor([[True]]))]  # C A B
    pen = diversity.ngram(state, refs, torch.tensor([[0]]), vocab=259, n=2)  # [1, 1, V]
    assert pen[0, 0].nonzero().flatten().tolist() == []  # no bigram of C A B starts with B
    state.ids[0, 2] = A  # row 0: A A -> the bigram (A, B) of the earlier group
    pen = diversity.ngram(state, refs, torch.tensor([[0]]), vocab=259, n=2)
    assert pen[0, 0].nonzero().flatten().tolist() == [B] and pen[0, 0, B].item() == 1.0
    unigram = diversity.ngram(state, refs, torch.tensor([[0]]), vocab=259, n=1)
    assert {t: unigram[0, 0, t].item() for t in (A, B, C)} == {A: 1.0, B: 1.0, C: 1.0}


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("options", [
    dict(num_beams=0), dict(num_beams=4, num_beam_groups=3), dict(num_beams=2, num_beam_groups=4),
    dict(num_beam_groups=0), dict(num_beams=4, num_return_sequences=5), dict(diversity_penalty=-0.1),
    dict(diversity_penalty=float("inf")), dict(diversity="embedding"), dict(mode="fairseq"),
    dict(diversity_discount=0.5, mode="hf"), dict(diversity_discount=1.5),
    dict(diversity_discount=0.5, diversity="ngram"), dict(diversity_temperature=0.0, diversity="cumulative"),
    dict(diversity_temperature=2.0), dict(diversity_ngram=0, diversity="ngram"), dict(diversity_ngram=3),
    dict(early_stopping="sometimes"), dict(length_penalty=float("inf")),
])
def test_bad_configs_raise(options):
    with pytest.raises(ValueError):
        DiverseBeam(**options)


def test_discount_zero_is_plain_hamming_and_discount_changes_results():
    lm = eos_lm(4)
    prompts = [lm.tokenizer.encode(p) for p in TINY_PROMPTS[:2]]
    kw = dict(num_beams=4, num_beam_groups=4, diversity_penalty=0.5, num_return_sequences=4, max_new_tokens=8)
    plain = _seqs(_run(lm, prompts, "diverse_beam", **kw))
    assert _seqs(_run(lm, prompts, "diverse_beam", diversity_discount=0.0, **kw)) == plain
    assert _seqs(_run(lm, prompts, "diverse_beam", diversity_discount=0.9, **kw)) != plain


# ----------------------------------------------------------------------------- transformers 4.56
@pytest.mark.slow
def test_hf_mode_equals_transformers_4_56(default_lm):
    ref = json.loads(REFERENCE.read_text())
    assert ref["transformers"] == "4.56.2"
    for case in ref["cases"]:
        ids = ref["prompts"][case["prompt"]]["ids"]
        gen = decodekit.generate(default_lm, [ids], "diverse_beam", mode="hf", max_new_tokens=ref["max_new_tokens"],
                                 eos_token_id=ref["eos_token_id"], **case["settings"])
        got = gen.candidates[0]
        assert [c.token_ids for c in got] == case["sequences"], case["settings"]
        # scores: sums of fp32 log-probs, recorded on another machine; the CPU's BLAS kernels round
        # differently from machine to machine (seen: 2e-5 relative), the token ids must match exactly
        assert [c.score for c in got] == pytest.approx(case["scores"], rel=1e-4, abs=1e-6)
