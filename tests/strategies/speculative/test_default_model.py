"""On the default model (SmolLM2-135M-Instruct): with greedy verification every proposer's output
equals greedy decoding of each prompt alone, for 8 prompts in two batches of mixed lengths."""

from __future__ import annotations

import json
from importlib import resources

import pytest

import decodekit
from tests.strategies.speculative.helpers import RandomDraft

pytestmark = pytest.mark.slow
NEW = 24


def _prompts() -> list[str]:
    grounded = resources.files("decodekit.data").joinpath("grounded.jsonl").read_text().splitlines()
    short = ["What is the largest planet in our solar system?", "Name three colours.",
             "Write a Python function that returns the reverse of a string.", "Hi!"]
    long = [json.loads(line)["prompt"] for line in grounded[:4]]
    return [long[0], short[0], short[1], long[1], long[2], short[2], short[3], long[3]]


@pytest.fixture(scope="module")
def alone(default_lm):
    """Greedy output of every prompt decoded alone."""
    return [decodekit.generate(default_lm, p, "greedy", max_new_tokens=NEW).token_ids[0] for p in _prompts()]


STRATEGIES = {
    "prompt_lookup": lambda lm: decodekit.strategies.get("prompt_lookup")(),
    "prompt_lookup_schedule": lambda lm: decodekit.strategies.get("prompt_lookup")(draft_policy="schedule"),
    "prompt_lookup_free_verify": lambda lm: decodekit.strategies.get("prompt_lookup")(verify_cost=(0, 0, 0)),
    "target_as_draft": lambda lm: decodekit.strategies.get("speculative")(draft=lm, draft_tokens=4),
    "random_tokens": lambda lm: RandomDraft(draft_tokens=3),
    "self_draft": lambda lm: decodekit.strategies.get("self_speculative")(),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_proposer_equals_greedy_in_mixed_batches(default_lm, alone, name):
    prompts = _prompts()
    got = []
    for batch in (prompts[:4], prompts[4:]):
        gen = decodekit.generate(default_lm, batch, STRATEGIES[name](default_lm), max_new_tokens=NEW)
        got += gen.token_ids
        if name == "target_as_draft":
            assert gen.stats.extra["acceptance_rate"] == 1.0
    assert got == alone
