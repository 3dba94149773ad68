"""Band math (smoothing, per-position stats, fits, violation rates), JSON round trip, and the
``decodekit calibrate-entropy`` command on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import decodekit
import decodekit.cli.model
from decodekit.cli.main import cli
from decodekit.monitors.band import Band, compute_band, model_signature, violation_rates
from decodekit.monitors.calibration import pydoc_prose, teacher_forced_entropies


def test_compute_band_matches_numpy_reference():
    rng = np.random.default_rng(0)
    seqs = [rng.uniform(0, 4, size=n) for n in (30, 30, 25, 12)]
    band = compute_band(seqs, width=5, degree=2, min_count=3, model="m", model_signature="s", vocab_size=9)
    smooth = [np.array([s[max(0, i - 4): i + 1].mean() for i in range(len(s))]) for s in seqs]
    for t in (0, 4, 11, 24):
        col = [s[t] for s in smooth if len(s) > t]
        assert band.mean[t] == pytest.approx(np.mean(col)) and band.std[t] == pytest.approx(np.std(col))
        assert band.count[t] == len(col)
    assert len(band.mean) == 25  # positions 25.. are covered by 2 texts only: dropped
    assert band.sem == pytest.approx(np.mean(band.mean)) and band.sev == pytest.approx(np.mean(band.std))
    np.testing.assert_allclose(band.mean_coeffs, np.polyfit(np.arange(25), band.mean, 2))
    lo, hi = band.bounds(torch.tensor([0, 3]), a=0.5, zone="flat")
    assert lo.tolist() == pytest.approx([band.sem - 0.5 * band.sev] * 2)
    lo, hi = band.bounds(torch.tensor([3, 500]), a=1.0, zone="position")
    x = np.array([3, 24])  # clamped to the calibrated positions
    want = np.polyval(band.mean_coeffs, x) + np.polyval(band.std_coeffs, x)
    assert hi.tolist() == pytest.approx(list(want), rel=1e-5)


def test_violation_rate_oracles():
    assert violation_rates([1.0] * 10, 0.5, 2.0) == {"elvr": 0.0, "euvr": 0.0, "evr": 0.0}
    r = violation_rates([0.0, 3.0, 1.0, 1.0], [0.5, 0.5, 1.5, 0.5], 2.0)
    assert r["elvr"] + r["euvr"] == r["evr"] == 0.75


def test_json_round_trip(tmp_path, tiny_lm):
    band = compute_band([np.ones(10), np.ones(10) * 2], model="tiny", model_signature=model_signature(tiny_lm),
                        vocab_size=tiny_lm.vocab_size, source="unit test", command="none")
    band.save(tmp_path / "b.json")
    assert Band.load(tmp_path / "b.json") == band
    assert band.check(tiny_lm) is band


def test_teacher_forced_entropies_equal_direct_computation(tiny_lm):
    chunk = tiny_lm.tokenizer("Entropy of every continuation token.").input_ids[:20]
    ent = teacher_forced_entropies(tiny_lm, [chunk, chunk[::-1]], prefix=5)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm.model(torch.tensor([chunk])).logits[0, 4:-1].float(), -1)
    np.testing.assert_allclose(ent[0], -(logp.exp() * logp).sum(-1).numpy(), rtol=1e-4, atol=1e-5)
    assert ent.shape == (2, 15)


def test_pydoc_prose_is_prose():
    texts = pydoc_prose()
    assert len(texts) > 40 and sum(map(len, texts)) > 50_000
    joined = "\n".join(texts)
    assert "::=" not in joined and ">>>" not in joined and "\n   " not in joined


@pytest.fixture
def tiny_cli(tiny_lm, monkeypatch):
    monkeypatch.setattr(decodekit.cli.model, "load", lambda model, device=None, dtype=None: tiny_lm)
    return CliRunner()


def test_calibrate_entropy_command(tiny_cli, tmp_path, tiny_lm):
    out = tmp_path / "band.json"
    res = tiny_cli.invoke(cli, ["calibrate-entropy", "-o", str(out), "--tokens", "16", "--max-texts", "6",
                                "--prefix", "8", "--model", "tiny"])
    assert res.exit_code == 0, res.output
    band = Band.load(out).check(tiny_lm)
    assert len(band.mean) == 16 and band.count[0] == 6 and band.vocab_size == 259
    assert band.command == (f"decodekit calibrate-entropy --output {out} --prefix 8 --tokens 16 "
                            "--max-texts 6 --model tiny")
    assert "pydoc_data.topics" in band.source and band.model == tiny_lm.name
    text = tmp_path / "ref.txt"
    text.write_text(" ".join(pydoc_prose()[:2]))
    res = tiny_cli.invoke(cli, ["calibrate-entropy", "-o", str(out), "--text", str(text), "--tokens", "8"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["source"].startswith("text files: ref.txt")


@pytest.mark.parametrize("args,message", [
    (["--text", "/no/such.txt"], "error: reference text '/no/such.txt' does not exist"),
    (["--text", "SHORT"], "error: the reference text yields 0 passage(s)"),
    (["--tokens", "2"], "Invalid value for '--tokens'"),
])
def test_calibrate_entropy_errors(tiny_cli, tmp_path, args, message):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    args = [str(short) if a == "SHORT" else a for a in args]
    res = tiny_cli.invoke(cli, ["calibrate-entropy", "-o", str(tmp_path / "b.json"), *args])
    assert res.exit_code != 0 and message in res.output, res.output


def test_plot_traces_writes_a_png(tmp_path, tiny_lm):
    from decodekit.monitors import Record
    from decodekit.monitors.plot import mean_trace, plot_traces

    runs = {s: decodekit.generate(tiny_lm, ["ab", "cde"], s, max_new_tokens=10, seed=0, monitors=[Record()])
            for s in ("greedy", "sample")}
    assert mean_trace(runs["greedy"], "entropy").shape == (10,)
    band = compute_band([np.ones(12), np.ones(12) * 3], model="t", model_signature="s", vocab_size=1)
    png = plot_traces(runs, tmp_path / "e.png", band=band)
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no trace of 'margin'"):
        mean_trace(runs["greedy"], "margin")
