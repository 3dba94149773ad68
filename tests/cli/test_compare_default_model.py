"""decodekit compare end to end on the embedded default model (slow: loads SmolLM2-135M)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import decodekit.cli.model
from decodekit.cli.main import cli


@pytest.mark.slow
def test_compare_default_model(default_lm, monkeypatch):
    monkeypatch.setattr(decodekit.cli.model, "load", lambda model=None, **_: default_lm)  # loaded once
    result = CliRunner().invoke(cli, ["compare", "--limit", "2", "--max-new-tokens", "8", "--json", "-"],
                                env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "greedy" in result.stderr and "dist-1" in result.stderr  # the tables
    assert "above band" in result.stderr and "self-BLEU" in result.stderr
    data = json.loads(result.stdout)
    assert len(data["prompts"]) == 2
    assert [s["spec"] for s in data["strategies"]][:2] == ["greedy", "sample:temperature=0.7,top_p=0.9"]
    for entry in data["strategies"]:
        m = entry["metrics"]
        assert m["prompts"] == 2 and 1 <= m["new_tokens_mean"] <= 8 and m["tokens_per_s"] > 0
        assert 0 < m["distinct_1"] <= 1 and 0 <= m["repetition_rate"] <= 1
        assert -20 < m["mean_logprob"] <= 0
        assert all(o["text"].strip() for o in entry["outputs"])
    # the shipped band fits the default model: the band columns have values, the traces cover the tokens
    specs = {s["strategy"]: s for s in data["strategies"]}
    for entry in data["strategies"]:
        m = entry["metrics"]
        assert 0 <= m["band_above"] <= 1 and 0 <= m["band_below"] <= 1
        assert entry["entropy"]["traced_tokens"] >= 0.8 * entry["stats"]["new_tokens"]
    assert specs["greedy"]["entropy"]["traced_tokens"] == specs["greedy"]["stats"]["new_tokens"]
    # beam and diverse beam return 4 sequences each: the diversity columns have values
    for name in ("beam", "diverse_beam"):
        if name in specs:
            m = specs[name]["metrics"]
            assert m["returned_per_prompt"] == 4 and 0 <= m["self_bleu"] <= 1 and m["edit_distance"] >= 0
    assert specs["greedy"]["metrics"]["self_bleu"] is None
    # the chat template is applied by default: the instruct model answers in English words
    assert any(c.isalpha() for c in data["strategies"][0]["outputs"][0]["text"])
