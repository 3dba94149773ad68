"""decodekit compare: metrics between the sequences returned for each prompt, and the repetition columns."""

from __future__ import annotations

import json

import pytest

import decodekit
from decodekit import metrics
from decodekit.cli.compare import default_specs

SINGLE = "beam:num_beams=4"
SEVERAL = "beam:num_beams=4,num_return_sequences=4"
PROMPTS = ["hello there", "abc", "The cat"]
RETURNED = ["returned_distinct_1", "returned_distinct_2", "self_bleu", "edit_distance"]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n")
    return str(path)


def test_returned_columns_differ_between_one_and_several_sequences(run, tiny_lm, prompts_file):
    result = run("compare", "-s", SINGLE, "-s", SEVERAL, "--prompts", prompts_file, "-n", "8", "--json", "-",
                 env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for header in ("between the sequences returned for each prompt", "seqs", "self-BLEU", "edit"):
        assert header in result.stderr
    one, several = json.loads(result.stdout)["strategies"]
    assert one["metrics"]["returned_per_prompt"] == 1.0 and several["metrics"]["returned_per_prompt"] == 4.0
    assert all(one["metrics"][k] is None for k in RETURNED)  # "-" in the table
    assert all(several["metrics"][k] is not None for k in RETURNED)
    rows = [line.split() for line in result.stderr.splitlines() if line.split()[:1] == ["beam:num_beams=4"]]
    assert ["beam:num_beams=4", "1.0", "-", "-", "-", "-"] in rows
    # the values are the documented functions of the returned token ids
    gen = decodekit.generate(tiny_lm, PROMPTS, "beam", num_beams=4, num_return_sequences=4, max_new_tokens=8)
    assert [[o["text"], *o["alternatives"]] for o in several["outputs"]] == [[c.text for c in cands]
                                                                             for cands in gen.candidates]
    ids = [[c.token_ids for c in cands] for cands in gen.candidates]
    m = several["metrics"]
    assert m["returned_distinct_1"] == pytest.approx(metrics.group_distinct_n(ids, 1))
    assert m["returned_distinct_2"] == pytest.approx(metrics.group_distinct_n(ids, 2))
    assert m["self_bleu"] == pytest.approx(metrics.self_bleu(ids))
    assert m["edit_distance"] == pytest.approx(metrics.pairwise_edit_distance(ids))
    assert 0 <= m["self_bleu"] <= 1 and m["edit_distance"] > 0


def test_diverse_beam_returns_more_diverse_sequences_than_beam(run, prompts_file):
    result = run("compare", "-s", SEVERAL, "-s", default_specs()[3], "--prompts", prompts_file, "-n", "10",
                 "--json", "-", "-q")
    beam, diverse = (s["metrics"] for s in json.loads(result.stdout)["strategies"])
    assert diverse["self_bleu"] < beam["self_bleu"]
    assert diverse["returned_distinct_2"] > beam["returned_distinct_2"]


def test_returned_group_hidden_when_every_strategy_returns_one_sequence(run, prompts_file):
    result = run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "4", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "self-BLEU" not in result.stdout and "between the sequences" not in result.stdout
    assert "seq-rep-4" in result.stdout and "loops" in result.stdout


def test_repetition_columns(run, tiny_lm, prompts_file):
    data = json.loads(run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "40", "--json", "-",
                          "-q").stdout)
    ids = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=40).token_ids
    m = data["strategies"][0]["metrics"]
    assert m["seq_rep_4"] == pytest.approx(metrics.seq_rep_n(ids, 4))
    assert m["loop_rate"] == pytest.approx(metrics.loop_rate(ids))


def test_default_specs_compare_beam_with_diverse_beam():
    specs = default_specs()
    assert specs[2] == SEVERAL
    assert specs[3].startswith("diverse_beam:num_beams=4,num_beam_groups=4,") and "num_return_sequences=4" in specs[3]
