"""Blockwise parallel decoding: Stern's criteria, exactness, heads training, save / load, CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import decodekit
from decodekit.strategies.speculative import (
    BlockwiseHeads, acceptance, load_heads, save_heads, stern_verify, train_heads,
)
from decodekit.strategies.speculative.train_heads import distillation_data

TRAIN = ["hello hello hello world", "abcabcabcabc", "the cat sat on the mat. the cat", "one two three four",
         "Zebras are striped.", "aaa bbb aaa bbb", "The quick brown fox", "1, 2, 3, 4, 5"]
HELD_OUT = ["the dog sat on the log. the dog", "abab abab abab", "hello world hello", "six seven eight"]


def _ids(texts):
    return [[b + 3 for b in t.encode()] for t in texts]


@pytest.fixture(scope="module")
def trained(tiny_lm):
    return train_heads(tiny_lm, _ids(TRAIN), num_heads=3, steps=150, max_new_tokens=32, batch_positions=128)


def test_stern_criteria():
    scores = torch.tensor([[[0., 2, 1], [3, 0, 2], [0, 0, 1]]])  # argmax 1, 0, 2
    drafts, count = torch.tensor([[2, 2]]), torch.tensor([2])
    exact = stern_verify(scores, drafts, count)
    assert exact.accepted.tolist() == [0] and exact.tokens[0, 0] == 1
    everything = stern_verify(scores, drafts, count, top_k=3)  # top-k = |V| accepts every proposal
    assert everything.accepted.tolist() == [2] and everything.tokens.tolist() == [[2, 2, 2]]
    block = stern_verify(scores, drafts, count, min_block=2)  # >= 2 tokens per step
    assert block.accepted.tolist() == [1] and block.tokens[0, :2].tolist() == [2, 0]


@pytest.mark.parametrize("heads", ["untrained", "random", "trained"])
def test_exact_criterion_equals_greedy(tiny_lm, trained, heads):
    h = {"untrained": None, "random": BlockwiseHeads(64, 3, init="random"), "trained": trained}[heads]
    prompts = TRAIN[:3] + HELD_OUT[:2]
    want = decodekit.generate(tiny_lm, prompts, "greedy", max_new_tokens=30, chat=False).token_ids
    got = decodekit.generate(tiny_lm, prompts, "blockwise", heads=h, num_heads=3, draft_tokens=3,
                             max_new_tokens=30, chat=False)
    assert got.token_ids == want
    alone = decodekit.generate(tiny_lm, prompts[1], "blockwise", heads=h, num_heads=3, draft_tokens=3,
                               max_new_tokens=30, chat=False)
    assert alone.token_ids[0] == want[1]


def test_min_block_advances_at_least_that_many_tokens(tiny_lm):
    gen = decodekit.generate(tiny_lm, TRAIN[:4], "blockwise", min_block=3, max_new_tokens=30, chat=False)
    extra = gen.stats.extra
    assert extra["tokens_per_step"] >= 2.5  # 3 per step except the warm-up step and clipped ends


def test_independent_heads_train_too(tiny_lm):
    heads = train_heads(tiny_lm, _ids(TRAIN), num_heads=2, steps=50, max_new_tokens=16, sequential=False)
    assert not heads.sequential and len(heads.token_proj) == 0
    got = decodekit.generate(tiny_lm, TRAIN[:2], "blockwise", heads=heads, draft_tokens=2, chat=False,
                             max_new_tokens=16)
    assert got.token_ids == decodekit.generate(tiny_lm, TRAIN[:2], "greedy", chat=False, max_new_tokens=16).token_ids


def test_training_raises_acceptance_above_random_heads(tiny_lm, trained):
    random = acceptance(tiny_lm, BlockwiseHeads(64, 3, init="random"), _ids(HELD_OUT), max_new_tokens=30)
    after = acceptance(tiny_lm, trained, _ids(HELD_OUT), max_new_tokens=30)
    assert after["acceptance_rate"] > random["acceptance_rate"] + 0.1
    assert after["target_forwards_per_token"] < random["target_forwards_per_token"]


def test_save_load_roundtrip_and_errors(tiny_lm, trained, tmp_path):
    path = tmp_path / "heads.safetensors"
    save_heads(trained, path, {"model": "tiny"})
    heads, meta = load_heads(path)
    assert meta["num_heads"] == 3 and meta["model"] == "tiny"
    h, prev = torch.randn(2, 64), torch.randn(2, 3, 64)
    assert heads.sequential
    torch.testing.assert_close(heads(h, prev), trained(h, prev).detach())
    gen = decodekit.generate(tiny_lm, "abcabc", "blockwise", heads=str(path), draft_tokens=3, chat=False,
                             max_new_tokens=10)
    assert len(gen.token_ids[0]) == 10
    with pytest.raises(FileNotFoundError, match="train-heads"):
        decodekit.strategies.get("blockwise")(heads=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="hidden size 32"):
        decodekit.generate(tiny_lm, "abc", "blockwise", heads=BlockwiseHeads(32, 2), chat=False)


@pytest.mark.parametrize("options, message", [
    ({"criterion": "top_k", "do_sample": True}, "greedy criteria"),
    ({"min_block": 0}, "min_block must be >= 1"),
    ({"criterion": "nearest"}, "criterion must be one of"),
    ({"heads": 3}, "heads must be BlockwiseHeads or a path"),
])
def test_bad_blockwise_config(options, message):
    with pytest.raises(ValueError, match=message):
        decodekit.strategies.get("blockwise")(**options)


def test_sampling_with_heads_is_seeded(tiny_lm, trained):
    kw = dict(heads=trained, draft_tokens=3, do_sample=True, temperature=0.8, seed=5, max_new_tokens=20, chat=False)
    a = decodekit.generate(tiny_lm, TRAIN[:3], "blockwise", **kw)
    assert a.token_ids == decodekit.generate(tiny_lm, TRAIN[:3], "blockwise", **kw).token_ids


def test_cli_train_heads(tiny_lm, tmp_path, monkeypatch):
    from decodekit.cli import train_heads as cli_module
    from decodekit.cli.main import cli

    monkeypatch.setattr(cli_module, "load_lm", lambda *a, **k: tiny_lm)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TRAIN + HELD_OUT[:2]))
    out = tmp_path / "h.safetensors"
    result = CliRunner().invoke(cli, ["train-heads", "-o", str(out), "-f", str(prompts), "--steps", "20",
                                      "--heads", "2", "--new-tokens", "8", "--eval", "2"])
    assert result.exit_code == 0, result.output
    assert "saved 2 heads" in result.output and "trained heads: accepted_per_verify" in result.output
    assert load_heads(out)[1]["steps"] == 20


def test_distillation_labels_are_the_models_greedy_tokens(tiny_lm):
    data = distillation_data(tiny_lm, _ids(TRAIN[:2]), max_new_tokens=6)
    gen = decodekit.generate(tiny_lm, _ids(TRAIN[:1]), "greedy", max_new_tokens=6)
    n = len(_ids(TRAIN[:1])[0])
    assert data.labels[0, n - 1: n + 5].tolist() == gen.token_ids[0][:6]
