"""greedy_pick (decodekit.fast.pick): torch.argmax's token and log_softmax's log-prob of it, in one
kernel split over the vocabulary. Compiled on CUDA, under Triton's interpreter elsewhere."""

from __future__ import annotations

import pytest
import torch

from decodekit.fast import launch as L
from decodekit.fast import pick as P
from decodekit.fast.pick import greedy_pick

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_reason = L.kernel_reason(DEVICE, interpret=True)
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"decodekit's Triton kernels: {_reason}")


def _want(logits: torch.Tensor):
    tokens = logits.argmax(-1)
    return tokens, torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])


@pytest.mark.parametrize("last_combines", [False, True], ids=["two-kernels", "last-block-combines"])
@pytest.mark.parametrize("rows,V,block", [(1, 49152, 4096), (3, 1000, 128), (2, 130, 64), (4, 257, 256)])
def test_greedy_pick_equals_torch(rows, V, block, last_combines, monkeypatch):
    monkeypatch.setattr(P, "BLOCK", block)
    g = torch.Generator(device=DEVICE).manual_seed(rows * V)
    logits = 4 * torch.randn(rows, V + 5, generator=g, device=DEVICE)[:, :V]  # rows strided
    logits[0, V // 3] = -float("inf")  # masked entries are fine
    tokens, logprobs = greedy_pick(logits, last_combines=last_combines)
    want_t, want_lp = _want(logits)
    assert tokens.dtype == torch.long and logprobs.shape == (rows, 1)
    assert torch.equal(tokens, want_t)
    torch.testing.assert_close(logprobs, want_lp, rtol=1e-5, atol=1e-5)
    if last_combines:
        assert not L._tickets[logits.device].any()  # every ticket left at zero for the next launch


@pytest.mark.parametrize("last_combines", [False, True], ids=["two-kernels", "last-block-combines"])
def test_greedy_pick_ties_take_the_first_index(last_combines, monkeypatch):
    """The largest value several times, in one block and across blocks: the first index, as argmax."""
    monkeypatch.setattr(P, "BLOCK", 64)
    logits = torch.zeros(3, 300, device=DEVICE)
    logits[0, [70, 71, 250]] = 5.0  # across blocks 1 and 3: 70
    logits[1, [255, 130]] = 2.0  # the later block holds the later index: 130
    logits[2, :] = 1.0  # all equal: 0, log-prob -log(300)
    tokens, logprobs = greedy_pick(logits, last_combines=last_combines)
    assert tokens.tolist() == [70, 130, 0] == logits.argmax(-1).tolist()
    torch.testing.assert_close(logprobs[2, 0], torch.tensor(-torch.log(torch.tensor(300.0)).item(), device=DEVICE))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on -inf - -inf
@pytest.mark.parametrize("last_combines", [False, True], ids=["two-kernels", "last-block-combines"])
def test_greedy_pick_blocks_of_only_minus_inf(last_combines, monkeypatch):
    """A block whose every entry is -inf (a masked-out part of the vocabulary) adds nothing."""
    monkeypatch.setattr(P, "BLOCK", 64)
    logits = torch.randn(2, 300, generator=torch.Generator(device=DEVICE).manual_seed(4), device=DEVICE)
    logits[0, :128] = -float("inf")  # blocks 0 and 1
    logits[1, 256:] = -float("inf")  # the last block, partly past the vocabulary
    tokens, logprobs = greedy_pick(logits, last_combines=last_combines)
    want_t, want_lp = _want(logits)
    assert torch.equal(tokens, want_t)
    torch.testing.assert_close(logprobs, want_lp, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on NaN
@pytest.mark.parametrize("last_combines", [False, True], ids=["two-kernels", "last-block-combines"])
def test_greedy_pick_nan_rows_still_give_a_token_id(last_combines, monkeypatch):
    """A broken model's NaN logits must not become an out-of-range token id (a device-side assert in
    the next embedding lookup): any id in range, NaN log-prob; the other rows are unaffected."""
    monkeypatch.setattr(P, "BLOCK", 64)
    logits = torch.randn(3, 300, generator=torch.Generator(device=DEVICE).manual_seed(3), device=DEVICE)
    logits[0] = float("nan")
    logits[1, 100] = float("nan")
    tokens, logprobs = greedy_pick(logits, last_combines=last_combines)
    assert all(0 <= t < 300 for t in tokens.tolist())
    assert logprobs[0].isnan().all()
    assert tokens[2] == logits[2].argmax()


def test_greedy_pick_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[rows, vocab\]"):
        greedy_pick(torch.zeros(2, 3, 4, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        greedy_pick(torch.zeros(8, 2, device=DEVICE).t())


def test_greedy_strategy_with_the_kernel_equals_greedy_with_torch(monkeypatch):
    """The greedy strategy's kernel branch (on CUDA by default; forced here) decodes the same tokens as
    its argmax / log_softmax branch, with the same log-probs to fp32 rounding."""
    import decodekit
    from decodekit.strategies import greedy as GR
    from tests.toy import ByteTokenizer, tiny_model

    lm = decodekit.load(tiny_model(seed=0).to(DEVICE), ByteTokenizer())  # fp32; on CUDA the graph path
    prompts = ["Hello there", "A"]
    monkeypatch.setattr(GR, "pick_fits", lambda logits: False)  # torch's argmax and log_softmax
    want = decodekit.generate(lm, prompts, max_new_tokens=12)
    calls = []

    def fits(logits):
        calls.append(logits.shape)
        return logits.dim() == 2 and logits.dtype == torch.float32 and logits.stride(-1) == 1

    monkeypatch.setattr(GR, "pick_fits", fits)
    got = decodekit.generate(lm, prompts, max_new_tokens=12)
    assert calls, "the kernel branch did not run"
    assert got.token_ids == want.token_ids
    for a, b in zip(got.logprobs, want.logprobs):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
