"""LM cache operations: crop, row selection, copy, and forward over masked columns."""

from __future__ import annotations

import torch

import decodekit


def _logits(lm, ids, cache, mask):
    return lm.forward(torch.tensor(ids), cache, torch.tensor(mask)).logits[:, -1]


def test_crop_equals_shorter_prefill(tiny_lm):
    a = [10, 11, 12, 13, 14, 15]
    cache = tiny_lm.new_cache()
    _logits(tiny_lm, [a], cache, [[1] * 6])
    tiny_lm.crop(cache, 4)
    assert tiny_lm.cache_length(cache) == 4
    got = _logits(tiny_lm, [[a[4]]], cache, [[1] * 5])
    want = _logits(tiny_lm, [a[:5]], tiny_lm.new_cache(), [[1] * 5])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_select_rows_reorders_and_repeats(tiny_lm):
    rows = [[20, 21, 22], [30, 31, 32]]
    cache = tiny_lm.new_cache()
    _logits(tiny_lm, rows, cache, [[1] * 3] * 2)
    tiny_lm.select_rows(cache, torch.tensor([1, 1, 0]))
    got = _logits(tiny_lm, [[40], [41], [42]], cache, [[1] * 4] * 3)
    want = _logits(tiny_lm, [rows[1] + [40], rows[1] + [41], rows[0] + [42]], tiny_lm.new_cache(),
                   [[1] * 4] * 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_copy_is_independent(tiny_lm):
    cache = tiny_lm.new_cache()
    _logits(tiny_lm, [[5, 6, 7]], cache, [[1] * 3])
    twin = tiny_lm.copy_cache(cache)
    _logits(tiny_lm, [[8]], cache, [[1] * 4])
    assert tiny_lm.cache_length(twin) == 3 and tiny_lm.cache_length(cache) == 4


def test_masked_columns_are_invisible(tiny_lm):
    """A hole in the middle of a row (rejected / rolled-back token) changes nothing."""
    cache = tiny_lm.new_cache()
    _logits(tiny_lm, [[5, 6, 99]], cache, [[1, 1, 1]])
    _logits(tiny_lm, [[7]], cache, [[1, 1, 0, 1]])  # 99 masked out after the fact: 7 takes position 2
    got = _logits(tiny_lm, [[8]], cache, [[1, 1, 0, 1, 1]])
    want = _logits(tiny_lm, [[5, 6, 7, 8]], tiny_lm.new_cache(), [[1] * 4])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_left_padding_matches_single_row(tiny_lm):
    enc = tiny_lm.encode([[5, 6, 7, 8], [9, 10]])
    assert enc.ids.tolist()[1][:2] == [tiny_lm.pad_token_id] * 2 and enc.mask.tolist()[1] == [0, 0, 1, 1]
    batch = tiny_lm.forward(enc.ids, tiny_lm.new_cache(), enc.mask).logits[:, -1]
    single = _logits(tiny_lm, [[9, 10]], tiny_lm.new_cache(), [[1, 1]])
    torch.testing.assert_close(batch[1:], single, rtol=1e-5, atol=1e-5)


def test_hidden_states_on_request(tiny_lm):
    out = tiny_lm.forward(torch.tensor([[5, 6]]), tiny_lm.new_cache(), torch.tensor([[1, 1]]), hidden=True)
    assert out.hidden is not None and out.hidden.shape == (1, 2, tiny_lm.config.hidden_size)


def test_lm_attributes(tiny_lm):
    assert tiny_lm.eos_token_ids == (2,) and tiny_lm.vocab_size == 259 and tiny_lm.max_length == 512
    assert decodekit.load(tiny_lm) is tiny_lm
    assert "LM(" in repr(tiny_lm)
