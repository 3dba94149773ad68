"""decodekit.gguf_once: a GGUF file's metadata is parsed once per load, and the load is unchanged.

The sharing is checked with stand-ins for gguf's reader, its tensor-name map and transformers'
metadata pass (counted calls; copies that callers may edit; everything restored afterwards, also
after an error). The default model loaded through decodekit (which uses it) must equal a plain
transformers load of the same file: every weight, the config and the tokenizer.
"""

from __future__ import annotations

import pytest

import decodekit.gguf_once as GO

gguf = pytest.importorskip("gguf")
mg = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")


@pytest.fixture
def stand_ins(monkeypatch):
    """Counting stand-ins in the places parsed_once patches; returns the call log."""
    calls = []

    class Reader:
        def __init__(self, path, *args):
            calls.append(("reader", str(path), args))

    def name_map(arch, layers):
        calls.append(("name_map", arch, layers))
        return object()

    def load(path, return_tensors=False, model_to_load=None):
        calls.append(("load", str(path), return_tensors))
        return {"config": {"layers": [1, 2]}, "tokenizer": {"tokens": ["a", "b"]}}

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", name_map)
    monkeypatch.setattr(mg, "load_gguf_checkpoint", load)
    return calls, (Reader, name_map, load)


def test_each_file_is_parsed_once_inside(stand_ins):
    calls, originals = stand_ins
    with GO.parsed_once():
        first, again = gguf.GGUFReader("a.gguf"), gguf.GGUFReader("a.gguf")
        assert first is again and gguf.GGUFReader("b.gguf") is not first
        gguf.GGUFReader("a.gguf", "r+")  # another mode: not shared
        meta = mg.load_gguf_checkpoint("a.gguf")
        meta["config"]["layers"].append(3)  # a caller edits its copy ...
        assert mg.load_gguf_checkpoint("a.gguf", return_tensors=False)["config"]["layers"] == [1, 2]  # ... not ours
        mg.load_gguf_checkpoint("a.gguf", return_tensors=True)  # the weights pass: its own each time
        mg.load_gguf_checkpoint("a.gguf", return_tensors=True)
        assert gguf.get_tensor_name_map(1, 30) is gguf.get_tensor_name_map(1, 30)
        gguf.get_tensor_name_map(1, 2)
    assert calls == [("reader", "a.gguf", ()), ("reader", "b.gguf", ()), ("reader", "a.gguf", ("r+",)),
                     ("load", "a.gguf", False), ("load", "a.gguf", True), ("load", "a.gguf", True),
                     ("name_map", 1, 30), ("name_map", 1, 2)]
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint) == originals


def test_nothing_is_shared_outside_and_an_error_restores(stand_ins):
    calls, originals = stand_ins
    gguf.GGUFReader("a.gguf")
    gguf.GGUFReader("a.gguf")
    assert len(calls) == 2
    with pytest.raises(RuntimeError, match="boom"), GO.parsed_once():
        assert gguf.GGUFReader is not originals[0]
        raise RuntimeError("boom")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint) == originals


def test_nested_on_one_thread_restores_the_originals(stand_ins):
    calls, originals = stand_ins
    with GO.parsed_once():
        outer = gguf.GGUFReader
        with GO.parsed_once():  # a load inside a load (same thread): no deadlock
            gguf.GGUFReader("a.gguf")
        assert gguf.GGUFReader is outer
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint) == originals


def test_a_load_on_another_thread_waits_and_restores_the_originals(stand_ins):
    """Thread B enters while A is inside: B waits, and on leaving puts back the real functions (not
    A's patches, which it must not take for the originals)."""
    import threading

    calls, originals = stand_ins
    b_inside, b_done = threading.Event(), threading.Event()

    def b():
        with GO.parsed_once():
            b_inside.set()
        b_done.set()

    with GO.parsed_once():
        thread = threading.Thread(target=b)
        thread.start()
        assert not b_inside.wait(0.2)  # B waits for A
    thread.join(10)
    assert b_done.is_set()
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint) == originals


def test_without_the_patched_functions_the_load_runs_as_is(monkeypatch):
    monkeypatch.delattr(mg, "load_gguf_checkpoint")
    reader = gguf.GGUFReader
    with GO.parsed_once():
        assert gguf.GGUFReader is reader
    assert not hasattr(mg, "load_gguf_checkpoint")


@pytest.mark.slow
def test_default_model_equals_a_plain_transformers_load(default_lm):
    """decodekit.load (metadata parsed once) == transformers' own three-pass load, bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decodekit.models import _dense, default_model_path

    path = default_model_path()
    kw = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw, **_dense(kw))
    assert default_lm.model.config.to_dict() == model.config.to_dict()
    assert default_lm.tokenizer.get_vocab() == tokenizer.get_vocab()
    text = "Summarise: the cat sat on the mat. <|im_end|> 3.14"
    assert default_lm.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    ours, theirs = default_lm.model.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
