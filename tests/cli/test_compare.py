"""decodekit compare on the tiny model: table, JSON and CSV outputs, specs, prompt files, errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

import decodekit
from decodekit import metrics
from decodekit.cli.columns import COLUMNS, Column, register_column
from decodekit.cli.prompts import default_prompts
from tests.cli.conftest import assert_one_line_error

SPECS = ("-s", "greedy", "-s", "sample:temperature=0.7,top_p=0.9")
KEYS = ["prompts", "new_tokens_mean", "tokens_per_s", "distinct_1", "distinct_2", "repetition_rate",
        "mean_logprob", "seq_rep_4", "loop_rate", "returned_per_prompt", "returned_distinct_1",
        "returned_distinct_2", "self_bleu", "edit_distance", "band_above", "band_below"]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "hello there", "id": "a"}, {"prompt": "abc"}, {"prompt": "The cat"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_default_prompt_set():
    prompts = default_prompts()
    assert 10 <= len(prompts) <= 16
    kinds = {p.meta["kind"] for p in prompts}
    assert {"prose", "list", "factual", "summarise", "rewrite", "code"} <= kinds
    assert all(isinstance(p.prompt, str) and p.prompt.strip() for p in prompts)


def test_table(run, prompts_file):
    result = run("compare", *SPECS, "--prompts", prompts_file, "-n", "6", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "greedy" in result.stdout and "sample:temperature=0.7, top_p=0.9" in result.stdout
    for header in ("prompts", "new tok", "tok/s", "dist-1", "dist-2", "rep-4", "logp/tok"):
        assert header in result.stdout


def test_json_has_metrics_and_texts(run, tiny_lm, prompts_file):
    result = run("compare", *SPECS, "--prompts", prompts_file, "-n", "6", "-b", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the table went to stderr
    assert "dist-1" in result.stderr
    assert [p["prompt"] for p in data["prompts"]] == ["hello there", "abc", "The cat"]
    assert data["prompts"][0]["id"] == "a"
    assert data["settings"]["batch_size"] == 2 and data["settings"]["seed"] == 0
    greedy, sample = data["strategies"]
    assert greedy["spec"] == "greedy" and sample["config"]["top_p"] == 0.9
    assert greedy["stats"]["batches"] == 2
    # the metrics are the documented functions of the per-prompt outputs
    expected = decodekit.generate(tiny_lm, ["hello there", "abc", "The cat"], max_new_tokens=6)
    assert [o["text"] for o in greedy["outputs"]] == expected.texts
    m = greedy["metrics"]
    assert list(m)[: len(KEYS)] == KEYS
    assert m["prompts"] == 3 and m["new_tokens_mean"] == 6.0 and m["tokens_per_s"] > 0
    assert m["distinct_1"] == pytest.approx(metrics.distinct_n(expected.token_ids, 1))
    assert m["distinct_2"] == pytest.approx(metrics.distinct_n(expected.token_ids, 2))
    assert m["repetition_rate"] == pytest.approx(metrics.repetition_rate(expected.token_ids, 4))
    assert m["mean_logprob"] == pytest.approx(metrics.mean_logprob(expected.logprobs), abs=1e-5)


def test_csv(run, prompts_file, tmp_path):
    out = tmp_path / "m.csv"
    result = run("compare", *SPECS, "--prompts", prompts_file, "-n", "4", "--csv", str(out),
                 "--json", "-", "-q")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["spec"] for r in rows] == ["greedy", "sample:temperature=0.7,top_p=0.9"]
    assert list(rows[0])[2:] == KEYS
    data = json.loads(result.stdout)
    for row, entry in zip(rows, data["strategies"]):
        assert float(row["distinct_1"]) == pytest.approx(entry["metrics"]["distinct_1"], rel=1e-5)
    stdout_csv = run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "4", "--csv", "-").stdout
    assert stdout_csv.startswith("spec,strategy,prompts,")


def test_batches_and_seeds_are_reproducible(run, prompts_file):
    args = ("compare", "-s", "sample:temperature=0.9", "--prompts", prompts_file, "-n", "5", "--json", "-")
    first = json.loads(run(*args, "-b", "2").stdout)["strategies"][0]
    again = json.loads(run(*args, "-b", "2").stdout)["strategies"][0]
    assert [o["text"] for o in first["outputs"]] == [o["text"] for o in again["outputs"]]
    other = json.loads(run(*args, "-b", "2", "--seed", "7").stdout)["strategies"][0]
    assert other["seed"] == 7
    assert [o["text"] for o in other["outputs"]] != [o["text"] for o in first["outputs"]]


def test_default_specs_and_limit(run):
    data = json.loads(run("compare", "--limit", "2", "-n", "3", "--json", "-").stdout)
    specs = [s["spec"] for s in data["strategies"]]
    assert specs[:2] == ["greedy", "sample:temperature=0.7,top_p=0.9"]
    if "beam" in decodekit.STRATEGIES:
        assert specs[2] == "beam:num_beams=4,num_return_sequences=4"
    if "diverse_beam" in decodekit.STRATEGIES:
        assert specs[3] == ("diverse_beam:num_beams=4,num_beam_groups=4,diversity_penalty=1.0,"
                            "num_return_sequences=4")
    assert len(data["prompts"]) == 2 and data["strategies"][0]["metrics"]["prompts"] == 2


def test_extra_columns(run, prompts_file, monkeypatch):
    """A registered column and stats.extra values appear in every output without other changes."""
    monkeypatch.setattr("decodekit.cli.columns.COLUMNS", list(COLUMNS))
    register_column(Column("chars", "chars", lambda r: sum(len(c.text) for c in r.best), "{:d}"))
    real_generate = decodekit.generate

    def with_extra(*args, **kwargs):
        gen = real_generate(*args, **kwargs)
        gen.stats.extra["accepted_per_verify"] = 2.5
        return gen

    monkeypatch.setattr("decodekit.cli.runs.decodekit.generate", with_extra)
    result = run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "3", "--json", "-",
                 env={"COLUMNS": "250"})
    m = json.loads(result.stdout)["strategies"][0]["metrics"]
    assert m["accepted_per_verify"] == 2.5 and m["chars"] >= 0
    assert "accepted per verify" in result.stderr


@pytest.mark.parametrize("args, needle", [
    (["-s", "greedy:top_p=0.9"], "has no option top_p"),
    (["-s", "nope"], "unknown strategy 'nope'"),
    (["-s", "sample:temperature=-1"], "temperature"),
    (["-s", "sample:temperature"], "key=value"),
    (["--json", "-", "--csv", "-"], "only one of"),
    (["--prompts", "/no/such/file.jsonl"], "No such file"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_errors(run, loads, args, needle):
    assert_one_line_error(run("compare", *args), needle)
    assert loads == []
