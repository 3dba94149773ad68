"""decodekit compare: entropy traces (plots, band violation rates) and monitor flags, on the tiny model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import decodekit
from decodekit.cli.entropy import BandZone, band_rates, best_traces, candidate_trace, smooth
from decodekit.cli.runs import StrategyRun
from decodekit.cli.columns import COLUMNS
from decodekit.cli.specs import Spec, build_strategy
from decodekit.monitors import Record
from decodekit.monitors.band import Band, model_signature
from decodekit.monitors.band import violation_rates
from decodekit.state import Candidate, Flag, Generation, Stats, Trace
from tests.cli.conftest import assert_one_line_error

PROMPTS = ["hello there", "abc", "The cat"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n")
    return str(path)


def flat_band(lm, sem: float, sev: float, width: int = 5, positions: int = 8) -> Band:
    """A band for ``lm`` whose zone is ``sem -+ a * sev`` (flat) at every position."""
    n = positions
    return Band(model="tiny", model_signature=model_signature(lm), vocab_size=lm.vocab_size, width=width,
                mean=(sem,) * n, std=(sev,) * n, count=(10,) * n, mean_coeffs=(0.0, 0.0, sem),
                std_coeffs=(0.0, 0.0, sev), sem=sem, sev=sev)


# ------------------------------------------------------------------ plots
def test_plots_write_a_png_and_keep_the_outputs(run, prompts_file, tmp_path):
    specs = ("-s", "greedy", "-s", "sample:temperature=0.9", "-s", "beam:num_beams=3,num_return_sequences=3")
    plain = json.loads(run("compare", *specs, "--prompts", prompts_file, "-n", "8", "--json", "-", "-q").stdout)
    out = tmp_path / "plots"
    result = run("compare", *specs, "--prompts", prompts_file, "-n", "8", "--json", "-", "--plots", str(out))
    assert result.exit_code == 0, result.output
    png = out / "entropy.png"
    data = png.read_bytes()
    assert data[:8] == PNG and len(data) > 1000
    assert f"wrote {png}" in result.stderr
    lines = list(csv.reader((out / "entropy.csv").read_text().splitlines()))
    assert lines[0] == ["position", "greedy", "sample:temperature=0.9", "beam:num_beams=3,num_return_sequences=3"]
    assert len(lines) == 1 + 8
    traced = json.loads(result.stdout)
    # recording the entropy never changes what the strategies generate
    for a, b in zip(plain["strategies"], traced["strategies"]):
        assert [o["text"] for o in a["outputs"]] == [o["text"] for o in b["outputs"]]
        assert [o.get("alternatives") for o in a["outputs"]] == [o.get("alternatives") for o in b["outputs"]]
        assert "entropy" not in a
    # greedy and sampling: every token; beam: not the last token of a hypothesis (its unit closes
    # at that step, so no row gains, and no monitor sees, the token)
    assert [len(s["entropy"]["mean_smoothed_entropy"]) for s in traced["strategies"]] == [8, 8, 7]
    greedy = traced["strategies"][0]["entropy"]
    assert greedy["traced_tokens"] == 3 * 8  # greedy: every token of every prompt
    first = float(lines[1][1])
    assert first == pytest.approx(greedy["mean_smoothed_entropy"][0], rel=1e-5)


def test_plot_trace_is_the_smoothed_entropy_of_the_best_sequence(run, tiny_lm, prompts_file, tmp_path):
    run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "7", "--plots", str(tmp_path), "-q")
    gen = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=7, monitors=[Record(("smoothed_entropy",))])
    expected = np.mean([t.signals["smoothed_entropy"] for t in gen.traces], 0)
    rows = [line.split(",") for line in (tmp_path / "entropy.csv").read_text().splitlines()[1:]]
    assert [float(r[1]) for r in rows] == pytest.approx(expected.tolist(), rel=1e-5)


# ------------------------------------------------------------------ band violation rates
def test_band_rates_on_a_constructed_case(tiny_lm):
    """Hand-made traces: the rates count tokens strictly above / below the zone."""
    zone = BandZone(flat_band(tiny_lm, sem=2.0, sev=1.0, width=1), a=1.0, zone="flat")  # zone [1, 3]
    cand = Candidate("", [5, 6, 7, 8], [0.0] * 4, 0.0, "length")
    gen = Generation("x", [[cand]], Stats(), traces=[Trace(0, 0, [5, 6, 7, 8], {"entropy": [1.0, 1.0, 4.0, 0.0]})])
    run = StrategyRun(Spec("greedy"), build_strategy(Spec("greedy")), generations=[gen], record=True, zone=zone)
    values = {c.key: c.compute(run) for c in COLUMNS if c.group == "entropy"}
    assert values == {"band_above": pytest.approx(1 / 4), "band_below": pytest.approx(1 / 4)}  # 4.0; 0.0
    # smoothed over 2 tokens: 1, 1, 2.5, 2 -> all inside
    wide = BandZone(flat_band(tiny_lm, sem=2.0, sev=1.0, width=2), a=1.0, zone="flat")
    assert band_rates(best_traces([gen], 2), wide) == (0.0, 0.0)
    # no band, or nothing recorded: "-"
    assert all(c.compute(StrategyRun(Spec("greedy"), run.strategy, generations=[gen], record=True)) is None
               for c in COLUMNS if c.group == "entropy")


def test_best_sequence_trace_comes_from_the_row_sharing_its_prefix():
    cand = Candidate("", [1, 2, 3, 4, 5], [0.0] * 5, 0.0, "eos")
    rows = [Trace(0, 0, [1, 2, 9, 9], {"entropy": [0.1, 0.2, 0.3, 0.4]}),
            Trace(0, 1, [1, 2, 3, 7], {"entropy": [1.1, 1.2, 1.3, 1.4]}),
            Trace(1, 2, [1, 2, 3, 4, 5], {"entropy": [9.0] * 5})]  # another prompt
    gen = Generation("beam", [[cand], [cand]], Stats(), traces=rows)
    # row 1 shares 3 tokens: positions 0..3 are exact (position 3 depends on tokens 0..2 only)
    assert candidate_trace(gen, 0, cand) == [1.1, 1.2, 1.3, 1.4]
    assert candidate_trace(gen, 1, cand) == [9.0] * 5
    assert candidate_trace(Generation("x", [[cand]], Stats()), 0, cand) == []
    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 5) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0, 4.0])


def test_band_columns_end_to_end(run, tiny_lm, prompts_file, tmp_path):
    """With --band, the columns equal violation_rates of the loop's own smoothed_entropy traces."""
    gen = decodekit.generate(tiny_lm, PROMPTS, max_new_tokens=10, monitors=[Record(("smoothed_entropy",))])
    values = np.concatenate([t.signals["smoothed_entropy"] for t in gen.traces])
    mid, half = float(np.median(values)), float(values.std()) / 4  # some tokens above, some below
    path = tmp_path / "band.json"
    flat_band(tiny_lm, sem=mid, sev=half, positions=16).save(path)
    result = run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "10", "--band", str(path),
                 "--band-zone", "flat", "--band-a", "1", "--json", "-", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "above band" in result.stderr and "below band" in result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["band"] == str(path) and data["settings"]["band_zone"] == "flat"
    m = data["strategies"][0]["metrics"]
    expected = violation_rates(values, mid - half, mid + half)
    assert m["band_above"] == pytest.approx(expected["euvr"]) and m["band_below"] == pytest.approx(expected["elvr"])
    assert 0 < m["band_above"] < 1 and 0 < m["band_below"] < 1
    none = json.loads(run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "4", "--band", "none",
                          "--json", "-", "-q").stdout)
    assert none["strategies"][0]["metrics"]["band_above"] is None and "entropy" not in none["strategies"][0]


def test_no_band_for_another_model(run, prompts_file):
    result = run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "4", "--json", "-")
    assert result.exit_code == 0, result.output
    assert "no entropy band fits this model" in result.stderr and "above band" not in result.stderr
    assert json.loads(result.stdout)["strategies"][0]["metrics"]["band_below"] is None


# ------------------------------------------------------------------ monitor flags
def test_flags_column_counts_flags(run, prompts_file):
    # logprob < 1 holds at every token: a flag where the stretch starts, i.e. once per prompt
    result = run("compare", "-s", "greedy", "-s", "beam:num_beams=2", "--prompts", prompts_file, "-n", "6",
                 "--monitor", "threshold:signal=logprob,below=1.0", "--json", "-", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "threshold /100" in result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["monitors"] == ["threshold:signal=logprob,below=1.0"]
    greedy, beam = data["strategies"]
    assert greedy["stats"]["monitored_tokens"] == 3 * 6
    assert greedy["metrics"]["flags_threshold"] == pytest.approx(100 * 3 / 18)
    for o in greedy["outputs"]:
        assert [(f["monitor"], f["action"], f["step"]) for f in o["flags"]] == [("threshold", "flag", 1)]
    # beams: both beams of each prompt are watched (and flagged once each)
    n_flags = sum(len(o["flags"]) for o in beam["outputs"])
    assert n_flags == 3 * 2
    assert beam["metrics"]["flags_threshold"] == pytest.approx(100 * n_flags / beam["stats"]["monitored_tokens"])


def test_flags_of_loops_and_entropy_band(run, prompts_file, tmp_path, tiny_lm):
    path = tmp_path / "band.json"
    flat_band(tiny_lm, sem=4.7, sev=0.01).save(path)
    result = run("compare", "-s", "greedy", "--prompts", prompts_file, "-n", "30", "--band", str(path),
                 "--monitor", "entropy_band", "--monitor", "loop:min_span=4", "--json", "-", "-q")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["strategies"][0]
    flags = [f for o in entry["outputs"] for f in o["flags"]]
    for name in ("entropy_band", "loop"):
        count = sum(f["monitor"] == name for f in flags)
        assert entry["metrics"][f"flags_{name}"] == pytest.approx(100 * count / entry["stats"]["monitored_tokens"])
    assert any(f["monitor"] == "entropy_band" for f in flags)  # a zone of +-0.015 nats: left at once


def test_prompt_flags_are_numbered_over_batches():
    gens = [Generation("x", [[None], [None]], Stats(), flags=[Flag(1, 3, "m", "flag")]),
            Generation("x", [[None]], Stats(), flags=[Flag(0, 2, "m", "flag"), Flag(0, 5, "m", "flag")])]
    run = StrategyRun(Spec("greedy"), build_strategy(Spec("greedy")), generations=gens)
    assert [[f.step for f in fl] for fl in run.prompt_flags()] == [[], [3], [2, 5]]


@pytest.mark.parametrize("args, needle", [
    (["--monitor", "nope"], "unknown monitor 'nope'"),
    (["--monitor", "loop:min_spam=3"], "has no option min_spam"),
    (["--monitor", "loop:min_span=x"], "min_span must be an integer"),
    (["--monitor", "loop:min_span=1"], "min_span must be >= 2"),
    (["--band-zone", "wide"], "--band-zone"),
])
def test_monitor_and_band_errors_before_loading(run, loads, args, needle):
    assert_one_line_error(run("compare", *args), needle)
    assert loads == []


def test_band_errors(run, prompts_file, tmp_path):
    from decodekit.monitors.band import default_band_path

    assert_one_line_error(run("compare", "-s", "greedy", "--prompts", prompts_file, "--band", str(tmp_path / "x.json")),
                          "does not exist")
    assert_one_line_error(run("compare", "-s", "greedy", "--prompts", prompts_file, "--band", str(default_band_path())),
                          "calibrated for")


@pytest.mark.parametrize("strategy, options", [("beam", {"num_beams": 4, "num_return_sequences": 4}),
                                               ("diverse_beam", {"num_beams": 4, "num_beam_groups": 2})])
def test_beam_hypotheses_are_traced_up_to_their_last_token(tiny_lm, strategy, options):
    """A beam unit that closes keeps its rows: the parents of its last hypotheses, with their traces."""
    prompts = ["hello there", "abc", "The cat", "x", "Once upon a time", "12345"]
    gen = decodekit.generate(tiny_lm, prompts, strategy, max_new_tokens=8, monitors=[Record(("entropy",))],
                             **options)
    for p, cands in enumerate(gen.candidates):
        for cand in cands:
            assert len(candidate_trace(gen, p, cand)) == len(cand.token_ids) - 1
