"""decodekit.processors against transformers' logits processors, padding invariance, order,
validation, and the exponential-race sampler (chi-square)."""
from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel
from transformers.generation import logits_process as hf

import decodekit.processors as dp
from decodekit.processors import (
    History,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    TypicalP,
    apply_processors,
    build_processors,
    sample_from_logits,
)

SEEDS = (0, 1, 2)
SHAPES = ((1, 7), (4, 50), (9, 301))  # (rows, vocab)


def _logits(seed: int, rows: int, vocab: int, ties: bool, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties at every threshold
        return torch.randint(-3, 3, (rows, vocab), generator=g).to(dtype)  # [rows, V]
    return (3 * torch.randn(rows, vocab, generator=g)).to(dtype)  # [rows, V]


def _full(ids: torch.Tensor) -> History:
    rows, length = ids.shape
    return History(ids, torch.zeros(rows, dtype=torch.long), torch.full((rows,), length))


def _same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.equal(ours, ref), (ours - ref).abs().nan_to_num().max()


# ---------------------------------------------------------------- 1. equal to transformers

WARPERS = [
    *[(Temperature(t), hf.TemperatureLogitsWarper(t)) for t in (0.3, 1.0, 2.5)],
    *[(TopK(k, m), hf.TopKLogitsWarper(k, min_tokens_to_keep=m)) for k in (1, 5, 40, 1000) for m in (1, 3)],
    *[(TopP(p, m), hf.TopPLogitsWarper(p, min_tokens_to_keep=m)) for p in (0.05, 0.5, 0.9, 1.0) for m in (1, 3)],
    *[(MinP(p, m), hf.MinPLogitsWarper(p, min_tokens_to_keep=m)) for p in (0.0, 0.05, 0.5, 1.0) for m in (1, 3)],
    *[(TypicalP(p, m), hf.TypicalLogitsWarper(p, min_tokens_to_keep=m)) for p in (0.05, 0.5, 0.95) for m in (1, 3)],
]


@pytest.mark.parametrize("ours, ref", WARPERS, ids=lambda x: repr(x) if isinstance(x, tuple) else None)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
def test_warpers_match_transformers(ours, ref, dtype, ties):
    for seed, (rows, vocab) in itertools.product(SEEDS, SHAPES):
        logits = _logits(seed, rows, vocab, ties, dtype)  # [rows, V]
        ids = torch.zeros(rows, 3, dtype=torch.long)  # [rows, 3] unused by warpers
        _same(ours(logits.clone(), None), ref(ids, logits.clone()))


def test_typical_p_one_is_identity():
    logits = _logits(0, 9, 301, ties=False)  # [rows, V]
    _same(TypicalP(1.0)(logits, None), logits)


def _history_ids(seed: int, rows: int, length: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    small = max(2, vocab // 8)  # small alphabet: repeated n-grams are common
    return torch.randint(0, small, (rows, length), generator=g)  # [rows, L]


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 3.0])
@pytest.mark.parametrize("length", [0, 1, 6, 40])
def test_repetition_penalty_matches_transformers(penalty, length):
    for seed, (rows, vocab) in itertools.product(SEEDS, SHAPES):
        logits = _logits(seed, rows, vocab, ties=seed == 2)  # [rows, V]
        logits[:, 0] = 0.0  # zero logits stay zero
        ids = _history_ids(seed, rows, length, vocab)  # [rows, L]
        ref = hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        _same(RepetitionPenalty(penalty)(logits.clone(), _full(ids)), ref)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("length", [0, 1, 2, 4, 7, 40])
def test_no_repeat_ngram_matches_transformers(n, length):
    for seed, (rows, vocab) in itertools.product(SEEDS, SHAPES):
        logits = _logits(seed, rows, vocab, ties=False)  # [rows, V]
        ids = _history_ids(seed, rows, length, vocab)  # [rows, L]
        ref = hf.NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
        _same(NoRepeatNGram(n)(logits.clone(), _full(ids)), ref)


def test_no_repeat_ngram_bans_something():  # guards the comparison above against a vacuous pass
    ids = _history_ids(0, 9, 40, 40)  # [rows, L] over 5 distinct ids
    out = NoRepeatNGram(2)(torch.zeros(9, 301), _full(ids))  # [rows, V]
    assert torch.isinf(out).any(dim=-1).all()


# ---------------------------------------------------------------- 2. padding invariance


def _padded(rows_ids: list[torch.Tensor], pad_left: list[int], total: int, seed: int) -> History:
    """Rows placed at offset pad_left[r] in a [rows, total] tensor of random junk ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, 20, (len(rows_ids), total), generator=g)  # [rows, total] junk incl. -1
    for r, (row, left) in enumerate(zip(rows_ids, pad_left)):
        ids[r, left : left + len(row)] = row
    start = torch.tensor(pad_left)  # [rows]
    end = start + torch.tensor([len(row) for row in rows_ids])  # [rows]
    return History(ids, start, end)


@pytest.mark.parametrize("proc", [RepetitionPenalty(1.7), RepetitionPenalty(0.6), *map(NoRepeatNGram, (1, 2, 3))])
@pytest.mark.parametrize("layout", ["left", "right", "both"])
@pytest.mark.parametrize("seed", SEEDS)
def test_history_processors_ignore_padding(proc, layout, seed):
    g = torch.Generator().manual_seed(seed)
    vocab, total = 20, 16
    rows_ids = [torch.randint(0, 3, (n,), generator=g) for n in (0, 1, 2, 5, 11, 16)]
    rows_ids.append(torch.tensor([4, 5, 1] * 4))  # periodic: every n-gram processor acts on it
    lengths = [len(row) for row in rows_ids]
    pad = {"left": [total - n for n in lengths], "right": [0] * len(lengths),
           "both": [(total - n) // 2 for n in lengths]}[layout]
    history = _padded(rows_ids, pad, total, seed)
    logits = _logits(seed, len(lengths), vocab, ties=False)  # [rows, V]
    out = proc(logits, history)  # [rows, V]
    for r, row in enumerate(rows_ids):
        alone = proc(logits[r : r + 1], _full(row[None]))  # [1, V]
        _same(out[r : r + 1], alone)
    assert not torch.equal(out, logits)  # the processor did act on some row


def test_history_mask():
    h = _padded([torch.tensor([1, 2]), torch.tensor([3])], [1, 0], 4, 0)
    assert h.mask.tolist() == [[False, True, True, False], [True, False, False, False]]


# ---------------------------------------------------------------- 3. order and composition

HF_NAME = {RepetitionPenalty: "RepetitionPenaltyLogitsProcessor", NoRepeatNGram: "NoRepeatNGramLogitsProcessor",
           Temperature: "TemperatureLogitsWarper", TopK: "TopKLogitsWarper", TopP: "TopPLogitsWarper",
           MinP: "MinPLogitsWarper", TypicalP: "TypicalLogitsWarper"}
SETTINGS = [
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.95, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(typical_p=0.8, min_p=0.1, top_p=0.95, top_k=50, temperature=1.5, no_repeat_ngram_size=3, repetition_penalty=0.8),
    dict(top_p=0.8, repetition_penalty=1.2),
    dict(min_p=0.2, temperature=0.5),
    dict(top_k=5, no_repeat_ngram_size=1, min_tokens_to_keep=3),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0),
]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=64, n_positions=64))


def _hf_list(model, settings: dict):
    s = dict(settings)
    keep = s.pop("min_tokens_to_keep", 1)
    s["min_p"] = s.get("min_p") or None  # transformers keeps MinP(0.0) (an identity); decodekit skips it
    gc = GenerationConfig(do_sample=True, **s)
    procs = model._get_logits_processor(generation_config=gc, input_ids_seq_length=5, device="cpu", model_kwargs={})
    for p in procs:  # beam sampling sets min_tokens_to_keep from the EOS count; emulate it directly
        if hasattr(p, "min_tokens_to_keep"):
            p.min_tokens_to_keep = keep
            if isinstance(p, hf.TopKLogitsWarper):
                p.top_k = max(p.top_k, keep)
    return procs


@pytest.mark.parametrize("settings", SETTINGS)
def test_build_order_and_chain_match_transformers(tiny_model, settings):
    ours = build_processors(**settings)
    ref = _hf_list(tiny_model, settings)
    assert [HF_NAME[type(p)] for p in ours] == [type(p).__name__ for p in ref]
    for seed, (rows, vocab) in itertools.product(SEEDS, SHAPES):
        logits = _logits(seed, rows, vocab, ties=seed == 1)  # [rows, V]
        ids = _history_ids(seed, rows, 30, vocab)  # [rows, L]
        _same(apply_processors(ours, logits.clone(), _full(ids)), ref(ids, logits.clone()))


def test_build_skips_identity_settings():
    assert build_processors() == ()
    assert build_processors(top_k=3, top_p=1.0) == (TopK(3),)
    assert [type(p) for p in build_processors(**SETTINGS[1])] == [
        RepetitionPenalty, NoRepeatNGram, Temperature, TopK, TopP, MinP, TypicalP]


# ---------------------------------------------------------------- 4. validation

BAD = [
    (lambda: Temperature(-1.0), "temperature"), (lambda: Temperature(0.0), "temperature"),
    (lambda: Temperature("hot"), "temperature"), (lambda: Temperature(float("nan")), "temperature"),
    (lambda: TopP(0.0), "top_p"), (lambda: TopP(1.5), "top_p"), (lambda: TopP(None), "top_p"),
    (lambda: TopK(0), "top_k"), (lambda: TopK(2.5), "top_k"), (lambda: TopK("5"), "top_k"), (lambda: TopK(True), "top_k"),
    (lambda: TopK(5, 0), "min_tokens_to_keep"), (lambda: TopP(0.5, 1.5), "min_tokens_to_keep"),
    (lambda: MinP(2.0), "min_p"), (lambda: MinP(-0.1), "min_p"),
    (lambda: TypicalP(0.0), "typical_p"), (lambda: TypicalP(1.1), "typical_p"),
    (lambda: RepetitionPenalty(0.0), "penalty"), (lambda: RepetitionPenalty(-2.0), "penalty"),
    (lambda: NoRepeatNGram(0), "ngram_size"), (lambda: NoRepeatNGram(2.0), "ngram_size"),
    *[(lambda k=k, v=v: build_processors(**{k: v}), k) for k, v in [
        ("temperature", -0.5), ("temperature", "1"), ("top_k", -1), ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5),
        ("min_p", 2.0), ("min_p", -1.0), ("typical_p", 0.0), ("typical_p", 1.5), ("repetition_penalty", 0.0),
        ("no_repeat_ngram_size", -1), ("no_repeat_ngram_size", "2"), ("min_tokens_to_keep", 0)]],
]


@pytest.mark.parametrize("make, name", BAD)
def test_invalid_values_raise(make, name):
    with pytest.raises(ValueError, match=rf"`{name}`"):
        make()


def test_history_processor_without_history_raises():
    with pytest.raises(ValueError, match="History"):
        NoRepeatNGram(2)(torch.zeros(1, 4), None)


def test_valid_values_normalised():
    assert TopK(np.int64(4)).top_k == 4 and type(TopK(np.int64(4)).top_k) is int
    assert Temperature(2).temperature == 2.0 and type(Temperature(2).temperature) is float


# ---------------------------------------------------------------- 5. sampling


def _draw(logits: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    batch = logits.expand(draws, -1)  # [draws, V]: one distribution, many rows at once
    return sample_from_logits(batch, torch.Generator().manual_seed(seed))  # [draws]


@pytest.mark.parametrize("procs", [(TopK(8), TopP(0.9)), (Temperature(0.8), MinP(0.05)), ()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampler_draws_from_softmax(procs, dtype):
    logits = _logits(3, 1, 12, ties=False, dtype=dtype) / 2  # [1, V]
    processed = apply_processors(procs, logits, None)  # [1, V]
    draws = 100_000
    tokens = _draw(processed, draws, seed=1234)  # [draws]
    assert tokens.dtype == torch.long and tokens.shape == (draws,)
    counts = torch.bincount(tokens, minlength=12).numpy()  # [V]
    probs = torch.softmax(processed.float(), dim=-1)[0].double().numpy()  # [V]
    kept = probs > 0
    assert counts[~kept].sum() == 0  # filtered tokens are never drawn
    assert kept.sum() >= 3
    expected = probs[kept] / probs[kept].sum() * draws  # float64: sums to `draws`
    assert chisquare(counts[kept], expected).pvalue > 1e-3


def test_sampler_detects_wrong_distribution():  # the chi-square test has power
    logits = _logits(3, 1, 12, ties=False) / 2  # [1, V]
    counts = torch.bincount(_draw(logits, 100_000, 1234), minlength=12).numpy()
    wrong = torch.softmax(logits.double() * 1.1, dim=-1)[0].numpy() * 100_000  # temperature 1/1.1
    assert chisquare(counts, wrong).pvalue < 1e-3


def test_sampler_seeding():
    logits = _logits(5, 2000, 30, ties=False)  # [rows, V]
    a = sample_from_logits(logits, torch.Generator().manual_seed(7))
    b = sample_from_logits(logits, torch.Generator().manual_seed(7))
    c = sample_from_logits(logits, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampler_single_survivor_is_deterministic():
    logits = TopK(1)(_logits(6, 500, 40, ties=False), None)  # [rows, V]
    tokens = sample_from_logits(logits, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, logits.argmax(dim=-1))


# ---------------------------------------------------------------- no host syncs, docstrings

ALL = [Temperature(0.7), TopK(5), TopP(0.8), MinP(0.1), TypicalP(0.9), RepetitionPenalty(1.3), NoRepeatNGram(3)]


def test_no_host_sync_on_meta_device():
    """Meta tensors hold no data: .item(), .tolist(), bool(tensor) and int(tensor) raise on them."""
    logits = torch.empty(4, 50, device="meta")  # [rows, V]
    ids = torch.empty(4, 12, dtype=torch.long, device="meta")  # [rows, L]
    bounds = torch.empty(4, dtype=torch.long, device="meta")  # [rows]
    out = apply_processors(ALL, logits, History(ids, bounds, bounds))  # [rows, V]
    assert out.shape == (4, 50) and out.device.type == "meta"
    assert sample_from_logits(out, None).shape == (4,)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the check has teeth
        int(logits.argmax())


def test_docstring_examples():
    result = doctest.testmod(dp, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0
