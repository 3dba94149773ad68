"""decodekit generate on the tiny model: prompts, options, outputs, and one-line errors."""

from __future__ import annotations

import json

import pytest

import decodekit
from tests.cli.conftest import assert_one_line_error


def test_generate_prints_the_same_text_as_the_api(run, tiny_lm):
    result = run("generate", "hello", "-n", "6")
    assert result.exit_code == 0, result.output
    expected = decodekit.generate(tiny_lm, "hello", max_new_tokens=6).text
    assert result.stdout == expected + "\n"
    assert "greedy: 6 new tokens" in result.stderr


def test_strategy_options_are_forwarded(run, tiny_lm):
    result = run("generate", "hello", "-s", "sample", "--temperature", "0.7", "--top-k", "5",
                 "-o", "top_p=0.9", "--seed", "3", "-n", "6", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["strategy"] == "sample" and data["prompts"] == ["hello"]
    assert data["config"]["temperature"] == 0.7 and data["config"]["top_k"] == 5
    assert data["config"]["top_p"] == 0.9 and data["config"]["min_p"] == 0.0  # unset: default
    expected = decodekit.generate(tiny_lm, "hello", "sample", max_new_tokens=6, seed=3,
                                  temperature=0.7, top_k=5, top_p=0.9)
    assert data["outputs"][0][0]["token_ids"] == expected.token_ids[0]
    assert data["stats"]["new_tokens"] == 6


def test_json_is_the_generation(run):
    result = run("generate", "hello", "-n", "4", "--json", "-q")
    data = json.loads(result.stdout)
    out = data["outputs"][0][0]
    assert set(out) >= {"text", "token_ids", "logprobs", "score", "finish_reason"}
    assert len(out["token_ids"]) == len(out["logprobs"]) == 4
    assert result.stderr == ""


def test_model_options_reach_the_loader(run, loads):
    result = run("generate", "hi", "-n", "2", "--model", "/some/folder", "--device", "cpu",
                 "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert loads == [{"model": "/some/folder", "device": "cpu", "dtype": "bfloat16"}]


def test_prompt_from_stdin(run, tiny_lm):
    result = run("generate", "-", "-n", "4", input="hello\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == decodekit.generate(tiny_lm, "hello", max_new_tokens=4).text + "\n"


@pytest.mark.parametrize("content, name", [
    ("first prompt\n\nsecond one\n", "prompts.txt"),
    ('{"prompt": "first prompt", "id": 1}\n{"prompt": "second one"}\n', "prompts.jsonl"),
])
def test_several_prompts_from_a_file(run, tiny_lm, tmp_path, content, name):
    path = tmp_path / name
    path.write_text(content)
    result = run("generate", "--file", str(path), "-n", "5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prompts"] == ["first prompt", "second one"]
    expected = decodekit.generate(tiny_lm, ["first prompt", "second one"], max_new_tokens=5)
    assert [o[0]["token_ids"] for o in data["outputs"]] == expected.token_ids
    text = run("generate", "--file", str(path), "-n", "5").stdout
    assert "[1/2] first prompt" in text and "[2/2] second one" in text


def test_stream_prints_the_text(run, tiny_lm):
    result = run("generate", "hello", "-n", "6", "--stream")
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == decodekit.generate(tiny_lm, "hello", max_new_tokens=6).text


def test_stop_string(run, tiny_lm):
    full = decodekit.generate(tiny_lm, "hello", max_new_tokens=8).text
    stop = full[2:4]
    data = json.loads(run("generate", "hello", "-n", "8", "--stop", stop, "--json").stdout)
    out = data["outputs"][0][0]
    assert out["finish_reason"] == "stop_string" and len(out["token_ids"]) < 8


# ---------------------------------------------------------------- errors: one line, no traceback
def test_option_the_strategy_does_not_have(run, loads):
    result = run("generate", "hello", "-s", "greedy", "--top-p", "0.9")
    assert_one_line_error(result, "'greedy' has no option --top-p", "--repetition-penalty", code=2)
    assert loads == []  # rejected before loading the model


def test_unknown_generic_option(run):
    assert_one_line_error(run("generate", "hello", "-o", "beams=3"), "has no option beams")
    assert_one_line_error(run("generate", "hello", "-o", "nokey"), "key=value")


@pytest.mark.parametrize("args, needle", [
    (["-s", "sample", "--temperature", "-1"], "temperature"),
    (["-s", "sample", "--top-p", "1.5"], "top_p"),
    (["-s", "sample", "--top-k", "two"], "top_k must be an integer"),
    (["-n", "0"], "--max-new-tokens"),
    (["--seed", "-3"], "--seed"),
])
def test_bad_values(run, loads, args, needle):
    assert_one_line_error(run("generate", "hello", *args), needle)
    assert loads == []


def test_unknown_strategy(run):
    assert_one_line_error(run("generate", "hello", "-s", "nope"), "unknown strategy 'nope'", "greedy", code=1)


def test_missing_and_empty_prompts(run, tmp_path):
    assert_one_line_error(run("generate"), "no prompt", code=2)
    assert_one_line_error(run("generate", ""), "empty", code=2)
    assert_one_line_error(run("generate", "-", input="  \n"), "empty")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_one_line_error(run("generate", "--file", str(empty)), "no prompts")
    assert_one_line_error(run("generate", "--file", str(tmp_path / "missing.txt")), "No such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    assert_one_line_error(run("generate", "--file", str(bad)), "line 1", '"prompt"')


def test_conflicting_options(run):
    assert_one_line_error(run("generate", "hi", "--stream", "--json"), "cannot be combined")
    assert_one_line_error(run("generate", "hi", "--file", "x.txt"), "not both")
    assert_one_line_error(run("generate", "hi", "--bogus"), "--bogus", code=2)


def test_model_errors_are_one_line(run, monkeypatch):
    def missing(model=None, **_):
        raise decodekit.ModelNotFoundError("the default model is not installed; install it with: pip ...")

    monkeypatch.setattr(decodekit.cli.model, "load", missing)
    assert_one_line_error(run("generate", "hi"), "not installed", code=1)


def test_unexpected_errors_are_one_line_unless_debug(run, monkeypatch):
    def broken(*_, **__):
        raise RuntimeError("boom")

    monkeypatch.setattr(decodekit.cli.model, "load", broken)
    assert_one_line_error(run("generate", "hi"), "RuntimeError: boom", "--debug")
    with pytest.raises(RuntimeError, match="boom"):
        run("--debug", "generate", "hi")
