"""Tree verification: the 4-D mask path, node logits, the descent, lossless outputs (greedy and
sampled), the fallback to chains, and tree prompt lookup on the tiny and the default model."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
from scipy import stats

import decodekit
from decodekit.fast import FastPath
from decodekit.processors import History, apply_processors, build_processors
from decodekit.strategies.speculative import Draft, DraftVerify, PromptLookupConfig
from decodekit.strategies.speculative.prompt_lookup import lookup, lookup_candidates
from decodekit.strategies.speculative.tree import tree_attention, tree_shape, tree_verify
from decodekit.strategies.speculative.trie import merge_candidates
from tests.strategies.speculative.helpers import check_cache_content, lm_without_4d_masks, run_steps, sequence_distribution
from tests.toy import EOS, ByteTokenizer, tiny_lm as make_tiny_lm, tiny_model

PROMPTS = ["hello hello hello world", "abcabcabcabc", "the cat sat on the mat. the cat", "x",
           "one two three, one two four, one two five, one two"]
NEW = 40


@pytest.fixture(scope="module")
def greedy(tiny_lm):
    return decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=NEW, chat=False)


def _sharpen(model, scale: float):
    """Scale the query and key projections: a random model's attention is nearly uniform, so its
    logits hardly depend on positions or on which columns it sees; sharpened, they do."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)
    return decodekit.load(model, ByteTokenizer())


@pytest.fixture(scope="module")
def sharp_lm():
    return _sharpen(tiny_model(seed=1), 4.0)


# ---------------------------------------------------------------------------- the 4-D mask path
def _prefilled(lm, rows: list[list[int]]):
    """A cache over left-padded ``rows``, row 0's last column masked (a rejected draft's, say)."""
    enc = lm.encode(rows)
    cache = lm.new_cache()
    lm.forward(enc.ids, cache, enc.mask)
    mask = enc.mask.clone()
    mask[0, -1] = 0
    return cache, mask


def test_4d_mask_equals_2d_path(tiny_lm):
    """A 4-D mask that says what the 2-D mask says (own columns, causal) gives the same logits."""
    cache, mask = _prefilled(tiny_lm, [[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    ids = torch.tensor([[20, 21, 22], [23, 24, 25]])
    full = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)  # [rows, S + 3]
    want = tiny_lm.forward(ids, tiny_lm.copy_cache(cache), full).logits
    S = mask.shape[1]
    causal = torch.arange(S + 3)[None, :] <= (S + torch.arange(3))[:, None]  # [3, S + 3]
    attend = (full[:, None, :] > 0) & causal  # [rows, 3, S + 3]
    pos = (full.cumsum(-1) - 1)[:, -3:]  # [rows, 3]
    got = tiny_lm.forward(ids, tiny_lm.copy_cache(cache), full, attend=attend, position_ids=pos).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_every_node_sees_exactly_its_path(tiny_lm):
    """Feeding a tree: each node's logits equal those of a fresh run of the row + its path."""
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    cache, mask = _prefilled(tiny_lm, prompts)
    kept = [[5, 6, 7, 8, 9], [11, 12, 13]]  # the hole hides row 0's last token
    root = torch.tensor([30, 31])  # the pending tokens
    # root -> 40 -> 42 -> 44, root -> 41 -> 43 (row 0); row 1 has only the first 3 nodes
    draft = Draft(torch.tensor([[40, 41, 42, 43, 44]] * 2), torch.tensor([5, 3]),
                  parents=torch.tensor([[0, 0, 1, 2, 3]] * 2))
    tree = tree_shape(root, draft)
    full, attend, pos = tree_attention(mask, tree, torch.tensor([True, True]), with_root=True)
    feed = torch.cat([root[:, None], draft.tokens], 1)  # [rows, 6]
    got = tiny_lm.forward(feed, tiny_lm.copy_cache(cache), full, attend=attend, position_ids=pos).logits
    paths = {0: [], 1: [40], 2: [41], 3: [40, 42], 4: [41, 43], 5: [40, 42, 44]}
    for r in range(2):
        for node, path in paths.items():
            if node > int(draft.count[r]):
                continue
            ids = torch.tensor([kept[r] + [int(root[r])] + path])
            want = tiny_lm.forward(ids, tiny_lm.new_cache(), torch.ones_like(ids)).logits[0, -1]
            torch.testing.assert_close(got[r, node], want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- trie and descent
def test_merge_candidates_builds_a_trie():
    cands = torch.tensor([[[1, 2, 3], [1, 2, 4], [5, 6, 0], [1, 2, 3]]])
    d = merge_candidates(cands, torch.tensor([[3, 3, 2, 3]]))  # the last repeats the first
    n = int(d.count[0])
    assert n == 6
    nodes = list(zip(d.tokens[0, :n].tolist(), d.parents[0, :n].tolist()))
    assert nodes == [(1, 0), (5, 0), (2, 1), (6, 2), (3, 3), (4, 3)]  # depth-major, parents first


def test_lookup_candidates_start_with_the_single_lookup():
    ids = torch.tensor([[0, 0, 4, 5, 6, 4, 5, 7, 9, 3, 5, 8, 4, 5]])
    start, end = torch.tensor([2]), torch.tensor([14])
    cands, lengths = lookup_candidates(ids, start, end, 3, 2, 1, num=4)
    single = lookup(ids, start, end, 3, 2, 1)
    assert cands[0, 0, :int(lengths[0, 0])].tolist() == single.tokens[0, :int(single.count[0])].tolist()
    got = [cands[0, i, :int(lengths[0, i])].tolist() for i in range(4)]
    assert got == [[7, 9, 3], [6, 4, 5], [8, 4, 5], []]  # "4 5" matches by recency, then "3 5"'s 5


def test_tree_verify_follows_the_target_into_the_second_branch():
    # root -> 1 -> 3, root -> 2 -> 4 -> 6, root -> 2 -> 5; the target wants 2, 4, 6, then 7
    draft = Draft(torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([6]), parents=torch.tensor([[0, 0, 1, 2, 2, 4]]))
    tree = tree_shape(torch.tensor([9]), draft)
    want = {0: 2, 2: 4, 4: 6, 6: 7}  # node -> the target's argmax there (others: 0)
    scores = torch.nn.functional.one_hot(torch.tensor([[want.get(i, 0) for i in range(7)]]), 10).float()
    v = tree_verify(scores, tree, sample=False, generator=None)
    assert v.accepted.tolist() == [3] and v.tokens[0, :4].tolist() == [2, 4, 6, 7]
    assert v.path[0, :4].tolist() == [0, 2, 4, 6]
    s = tree_verify(scores * 1e4, tree, sample=True, generator=torch.Generator().manual_seed(0))
    assert s.tokens[0, :4].tolist() == [2, 4, 6, 7]  # (near) one-hot target: sampling agrees


# ---------------------------------------------------------------------------- greedy exactness
@pytest.mark.parametrize("options", [{"num_candidates": 2}, {"num_candidates": 4},
                                     {"num_candidates": 3, "adaptive": False, "draft_tokens": 3},
                                     {"num_candidates": 8, "max_ngram": 1}])
def test_tree_lookup_equals_greedy_alone_and_batched(tiny_lm, greedy, options):
    """Mixed lengths, rows accepting different paths: each row's output is its greedy output alone."""
    got = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False, **options)
    assert got.token_ids == greedy.token_ids
    assert got.stats.extra["tree_verifies"] > 0
    for i, prompt in enumerate(PROMPTS):
        alone = decodekit.generate(tiny_lm, prompt, "prompt_lookup", max_new_tokens=NEW, chat=False, **options)
        assert alone.token_ids[0] == greedy.token_ids[i]


def test_sharp_model_tree_lookup_equals_greedy(sharp_lm):
    want = decodekit.generate(sharp_lm, PROMPTS, "greedy", max_new_tokens=NEW, chat=False)
    got = decodekit.generate(sharp_lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False, num_candidates=4)
    assert got.token_ids == want.token_ids and got.stats.extra["tree_verifies"] > 0


def test_tree_accepts_more_than_the_chain(tiny_lm, greedy):
    chain = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False)
    tree = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False, num_candidates=4)
    assert chain.stats.extra["tree_verifies"] == 0
    assert tree.stats.extra["accepted_per_verify"] > chain.stats.extra["accepted_per_verify"]


def test_tree_with_history_processors_and_eos(tiny_lm, greedy):
    options = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
    want = decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=30, chat=False, **options)
    got = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=30, chat=False,
                             num_candidates=3, **options)
    assert got.token_ids == want.token_ids
    eos = greedy.token_ids[1][12]  # a token inside the repetitive row's accepted drafts
    want = decodekit.generate(tiny_lm, PROMPTS, "greedy", max_new_tokens=NEW, chat=False, eos_token_id=eos)
    got = decodekit.generate(tiny_lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False,
                             eos_token_id=eos, num_candidates=3)
    assert got.token_ids == want.token_ids and got.finish_reasons == want.finish_reasons


def test_tree_keeps_the_cache_consistent(tiny_lm):
    strategy = decodekit.strategies.get("prompt_lookup")(num_candidates=4)
    state = run_steps(tiny_lm, strategy, PROMPTS, 37, eos=(400,))  # checks the invariant every step
    assert state.extra["_spec_run"].tree_verifies > 0
    check_cache_content(state)


class OracleTreeProposer:
    """Proposes a tree of three candidates per row; only the last is right (the row's greedy
    continuation), the second shares its first token: the descent must take later branches."""

    gives_probs = False
    makes_trees = True

    def __init__(self, truth: list[list[int]], vocab: int):
        self.truth, self.vocab = truth, vocab

    def start(self, state):
        pass

    def propose(self, state, k, ctx):
        assert ctx.tree
        cands = torch.zeros(state.rows, 3, k, dtype=torch.long)
        for r in range(state.rows):
            n = int(state.n_new[r])
            right = torch.tensor(self.truth[int(state.prompt_of_row[r])][n:n + k])  # [k]
            cands[r, 2] = right
            cands[r, 1] = right
            cands[r, 1, 1:] = (right[1:] + 1) % self.vocab  # right first token, then wrong
            cands[r, 0] = (right + 7) % self.vocab  # wrong from the start
        tree = merge_candidates(cands, torch.full((state.rows, 3), k))
        width = int(tree.count.max())
        return Draft(tree.tokens[:, :width], tree.count, parents=tree.parents[:, :width])

    def accepted(self, state, draft, accepted):
        pass


class OracleTree(DraftVerify):
    name = "oracle_tree"
    Config = PromptLookupConfig

    def __init__(self, truth, vocab, **options):
        super().__init__(**options)
        self.truth, self.vocab = truth, vocab

    def make_proposer(self, state):
        return OracleTreeProposer(self.truth, self.vocab)


def test_hand_built_tree_takes_the_right_branch(sharp_lm):
    """The right candidate comes last: a chain of the first would accept nothing. Nodes that saw
    their siblings, or sat at fed-order positions instead of row length + depth, get other logits
    on the sharpened model, and the output or the accepted counts change (checked by mutation)."""
    k = 4
    truth = decodekit.generate(sharp_lm, PROMPTS, "greedy", max_new_tokens=NEW + k + 1, chat=False,
                               eos_token_id=[]).token_ids
    strategy = OracleTree(truth, sharp_lm.vocab_size, draft_tokens=k, adaptive=False)
    got = decodekit.generate(sharp_lm, PROMPTS, strategy, max_new_tokens=NEW, chat=False, eos_token_id=[])
    assert got.token_ids == [t[:NEW] for t in truth]
    assert got.stats.extra["accepted_per_verify"] == k  # every step: the whole right branch
    assert got.stats.steps == NEW // (k + 1)


# ---------------------------------------------------------------------------- fallback to chains
@pytest.mark.parametrize("mode", ["raise", "ignore"])
def test_falls_back_to_the_chain_without_4d_masks(greedy, mode):
    lm = lm_without_4d_masks(mode)
    assert not lm.accepts_4d_mask()
    got = decodekit.generate(lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False, num_candidates=4)
    chain = decodekit.generate(lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False)
    assert got.token_ids == greedy.token_ids
    assert got.stats.extra["tree_verifies"] == 0
    assert got.stats.extra == chain.stats.extra  # exactly the best single candidate


def test_falls_back_to_the_chain_on_the_fast_path(greedy):
    lm = make_tiny_lm()
    lm.fast = FastPath(lm, capture=False)  # static cache, no custom masks there
    got = decodekit.generate(lm, PROMPTS, "prompt_lookup", max_new_tokens=NEW, chat=False, num_candidates=4)
    assert got.token_ids == greedy.token_ids and got.stats.extra["tree_verifies"] == 0


def test_bad_num_candidates():
    for bad in (0, 17):
        with pytest.raises(ValueError, match="num_candidates must be in 1..16"):
            decodekit.strategies.get("prompt_lookup")(num_candidates=bad)


# ---------------------------------------------------------------------------- sampling is lossless
V, SNEW, ROWS = 6, 3, 10_000
SPROMPT = [3, 4, 5, 3, 1, 4, 3, 5, 0, 3, 4, 1, 3]  # "3" is followed by 4, 1, 5 and 4 earlier
OPTION_SETS = {  # processed on target and verification alike; the n-gram ban must see each node's path
    "penalty": {"temperature": 1.5, "top_k": 5, "repetition_penalty": 1.5},
    "ngram_ban": {"temperature": 1.5, "top_k": 5, "repetition_penalty": 1.5, "no_repeat_ngram_size": 3},
}


def _exact_sequences(target, options) -> dict[tuple[int, ...], float]:
    """P(continuation) under the processed target (EOS ends a continuation early)."""
    procs = build_processors(**options)

    def dist(prefix):
        ids = torch.tensor([SPROMPT + list(prefix)])
        logits = target.forward(ids, target.new_cache(), torch.ones_like(ids)).logits[:, -1]  # [1, V]
        history = History(ids, torch.tensor([0]), torch.tensor([ids.shape[1]]))
        return apply_processors(procs, logits, history).softmax(-1)[0].tolist()

    return sequence_distribution(dist, SNEW, EOS)


def _pvalue(small_target, option_set: str, rows: int = ROWS) -> float:
    target, exact = small_target
    options, exact = OPTION_SETS[option_set], exact[option_set]
    gen = decodekit.generate(target, [SPROMPT] * rows, "prompt_lookup", do_sample=True, num_candidates=3,
                             draft_tokens=2, adaptive=False, max_new_tokens=SNEW, seed=0, **options)
    assert gen.stats.extra["tree_verifies"] > 0
    counts = dict.fromkeys(exact, 0)
    for toks in gen.token_ids:
        if tuple(toks) not in counts:  # a continuation the target cannot produce
            return 0.0
        counts[tuple(toks)] += 1
    obs, exp, acc_o, acc_e = [], [], 0, 0.0
    for key in sorted(exact, key=exact.get):  # merge unlikely continuations until a bin expects >= 5
        acc_o, acc_e = acc_o + counts[key], acc_e + exact[key] * rows
        if acc_e >= 5:
            obs.append(acc_o), exp.append(acc_e)
            acc_o, acc_e = 0, 0.0
    obs[-1], exp[-1] = obs[-1] + acc_o, exp[-1] + acc_e
    exp = [e * rows / sum(exp) for e in exp]
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.fixture(scope="module")
def small_target():
    """A 6-token sharpened model and the exact continuation distribution under each option set."""
    target = _sharpen(tiny_model(seed=0, vocab=V, hidden=16), 8.0)
    return target, {name: _exact_sequences(target, options) for name, options in OPTION_SETS.items()}


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_tree_sampling_matches_the_target_distribution(small_target, option_set):
    """Seeded tree sampling (n-gram trees of 3 candidates) against the exact distribution of the
    3-token continuations, by chi-square over 10 000 rows of one batch."""
    p = _pvalue(small_target, option_set)
    assert p > 1e-3, p


def _leaky(mask, tree, active, with_root):  # nodes also see earlier siblings (a causal mask)
    full, attend, pos = tree_attention(mask, tree, active, with_root)
    T = attend.shape[1]
    attend[:, :, -T:] = torch.ones(T, T, dtype=torch.bool).tril() & active[:, None, None]
    return full, attend, pos


def _fed_positions(mask, tree, active, with_root):  # positions by fed order, not by depth
    full, attend, pos = tree_attention(mask, tree, active, with_root)
    return full, attend, (full.cumsum(-1) - 1)[:, -pos.shape[1]:]


def _pathless_history(state, tree, i):  # processors see the row's tokens only, not the node's path
    return History(state.ids, state.start, state.end)


@pytest.mark.parametrize("name, broken, option_set", [
    ("tree_attention", _leaky, "penalty"), ("tree_attention", _fed_positions, "penalty"),
    ("node_history", _pathless_history, "ngram_ban")])
def test_the_sampling_test_catches_broken_trees(small_target, monkeypatch, name, broken, option_set):
    from decodekit.strategies.speculative import strategy as strategy_module

    monkeypatch.setattr(strategy_module, name, broken)
    assert _pvalue(small_target, option_set, rows=5000) < 1e-6


# ---------------------------------------------------------------------------- the default model
@pytest.mark.slow
def test_tree_lookup_equals_greedy_on_grounded_prompts(default_lm):
    """The 8 grounded prompts (rewrites, summaries: lots to copy) in one batch of mixed lengths."""
    lines = resources.files("decodekit.data").joinpath("grounded.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    assert len(prompts) == 8
    new = 32
    alone = [decodekit.generate(default_lm, p, "greedy", max_new_tokens=new).token_ids[0] for p in prompts]
    got = decodekit.generate(default_lm, prompts, "prompt_lookup", max_new_tokens=new, num_candidates=4)
    assert got.token_ids == alone
    assert got.stats.extra["tree_verifies"] > 0
