"""The loop: per-row stopping, streaming, and monitors that stop rows or roll them back."""

from __future__ import annotations

import torch

import decodekit
from decodekit.monitors import ROLLBACK, STOP, Verdict


def teacher_forced_logprobs(lm, prompt: list[int], new: list[int]) -> torch.Tensor:
    """Model log-probs of ``new`` after ``prompt``, from one fresh forward pass."""
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        logits = lm.model(ids).logits[0, len(prompt) - 1: -1].float()  # [len(new), vocab]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(new)[:, None])[:, 0]


class RollbackOnce:
    """Rolls rows back ``n`` tokens once, at a given step (per row)."""

    name = "rollback_once"

    def __init__(self, at_step: dict[int, int], n: dict[int, int]):
        self.at_step, self.n, self.fired = at_step, n, set()

    def observe(self, state, out):
        mask = torch.zeros(state.rows, dtype=torch.bool)
        n = torch.zeros(state.rows, dtype=torch.long)
        for r, step in self.at_step.items():
            if state.steps == step and r not in self.fired:
                self.fired.add(r)
                mask[r], n[r] = True, self.n[r]
        return Verdict(torch.where(mask, ROLLBACK, 0), n)


def test_rollback_leaves_cache_as_fresh_run(tiny_lm):
    """After rolling rows back, every logged log-prob equals a fresh teacher-forced pass, so
    the rolled-back tokens left no trace in the cache (a stale column would change them)."""
    prompts = [tiny_lm.tokenizer("hello there").input_ids, tiny_lm.tokenizer("ab").input_ids]
    mon = RollbackOnce(at_step={0: 6, 1: 4}, n={0: 3, 1: 4})
    gen = decodekit.generate(tiny_lm, prompts, "sample", max_new_tokens=12, seed=0, monitors=[mon])
    assert mon.fired == {0, 1}
    assert [f.action for f in gen.flags] == ["rollback", "rollback"]
    plain = decodekit.generate(tiny_lm, prompts, "sample", max_new_tokens=12, seed=0)
    assert gen.token_ids != plain.token_ids  # re-decoded with other random draws
    for p, new, lps in zip(prompts, gen.token_ids, gen.logprobs):
        assert len(new) == 12
        torch.testing.assert_close(torch.tensor(lps), teacher_forced_logprobs(tiny_lm, p, new),
                                   rtol=1e-4, atol=1e-4)


def test_rollback_then_greedy_equals_greedy(tiny_lm):
    prompt = tiny_lm.tokenizer("xyz").input_ids
    mon = RollbackOnce(at_step={0: 5}, n={0: 5})  # back to the prompt itself
    gen = decodekit.generate(tiny_lm, prompt, max_new_tokens=9, monitors=[mon])
    assert gen.token_ids == decodekit.generate(tiny_lm, prompt, max_new_tokens=9).token_ids
    assert gen.stats.steps == 9 + 5


def test_monitor_stops_one_row(tiny_lm):
    class StopAtThree:
        name = "stop3"

        def observe(self, state, out):
            return Verdict.where((state.n_new == 3) & (state.prompt_of_row == 1), STOP)

    gen = decodekit.generate(tiny_lm, ["aa", "bb"], max_new_tokens=6, monitors=[StopAtThree()])
    assert [len(t) for t in gen.token_ids] == [6, 3]
    assert gen.finish_reasons == ["length", "monitor"]
    assert gen.flags[0].prompt == 1 and gen.flags[0].action == "stop"


def test_eos_stops_each_row_and_is_kept(tiny_lm):
    prompts = ["first", "second one"]
    free = decodekit.generate(tiny_lm, prompts, max_new_tokens=10, eos_token_id=[]).token_ids
    eos_a, eos_b = free[0][3], free[1][6]
    assert eos_a not in free[0][:3] and eos_b not in free[1][:6]
    gen = decodekit.generate(tiny_lm, prompts, max_new_tokens=10, eos_token_id=[eos_a, eos_b])
    cut = [min([i for i, t in enumerate(f) if t in (eos_a, eos_b)]) + 1 for f in free]
    assert gen.token_ids == [f[:c] for f, c in zip(free, cut)]
    assert gen.finish_reasons == ["eos", "eos"]
    assert gen.stats.new_tokens == sum(cut)


def test_max_new_tokens_per_row_and_stop_strings(tiny_lm):
    free = decodekit.generate(tiny_lm, "stop me", max_new_tokens=12)
    text = free.texts[0]
    stop = next(text[i:i + 2] for i in range(4, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    gen = decodekit.generate(tiny_lm, "stop me", max_new_tokens=12, stop_strings=[stop])
    n = len(gen.token_ids[0])
    assert gen.token_ids[0] == free.token_ids[0][:n] and stop in gen.texts[0]
    assert stop not in tiny_lm.decode(free.token_ids[0][: n - 1])
    assert gen.finish_reasons == ["stop_string"]


def test_stop_strings_are_found_far_beyond_the_check_window(tiny_lm, monkeypatch):
    import decodekit.stopping

    monkeypatch.setattr(decodekit.stopping, "STOP_WINDOW", 2)  # the window a step really needs: 1 token
    free = decodekit.generate(tiny_lm, "a long one", "sample", seed=1, max_new_tokens=90)
    ids = free.token_ids[0]
    # a 3-character stop string (3 ASCII byte tokens) whose first occurrence ends late in the text
    ascii_ = lambda t: 3 + 32 <= t < 3 + 127
    end = next(e for e in range(len(ids) - 10, 60, -1)
               if all(map(ascii_, ids[e - 3:e])) and tiny_lm.decode(ids[e - 3:e]) not in tiny_lm.decode(ids[:e - 1]))
    stop = tiny_lm.decode(ids[end - 3:end])
    gen = decodekit.generate(tiny_lm, "a long one", "sample", seed=1, max_new_tokens=90, stop_strings=[stop])
    assert gen.token_ids[0] == ids[:end] and gen.finish_reasons == ["stop_string"]


def test_stream_callback_concatenates_to_texts(tiny_lm):
    pieces: dict[int, str] = {}
    gen = decodekit.generate(tiny_lm, ["one", "two"], max_new_tokens=8,
                             stream=lambda i, t: pieces.__setitem__(i, pieces.get(i, "") + t))
    assert [pieces[0], pieces[1]] == gen.texts


def test_same_seed_same_output_different_seed_differs(tiny_lm):
    run = lambda s: decodekit.generate(tiny_lm, ["a", "b"], "sample", max_new_tokens=10, seed=s).token_ids
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_single_token_append_equals_the_general_append(tiny_lm):
    """``DecodeState.append`` takes a shortcut for one-token steps; it must write exactly what the
    general path writes (forced here with ``cached``), for rows that gain a token and rows that do
    not, at the start, in the middle and at the last column."""
    import copy

    from decodekit.loop import prefill
    from decodekit.state import StepOutput

    state = prefill(tiny_lm, [[5, 6, 7], [8, 9]], 4, None, ())
    g = torch.Generator().manual_seed(0)
    for step in range(6):  # 6 steps into 4 columns: the last ones clip every row
        tokens = torch.randint(1, 200, (2, 1), generator=g)
        count = torch.tensor([step % 2, 1]) * (state.n_new < state.limit)  # row 0 gains every other step
        logprobs = -torch.rand(2, 1, generator=g)
        fast, general = copy.copy(state), copy.copy(state)
        for s in (fast, general):
            s.ids, s.logprobs = s.ids.clone(), s.logprobs.clone()
        fast.append(StepOutput(tokens, count, logprobs))
        general.append(StepOutput(tokens, count, logprobs, cached=torch.zeros_like(count)))  # general path
        assert torch.equal(fast.ids, general.ids) and torch.equal(fast.logprobs, general.logprobs)
        assert torch.equal(fast.n_new, general.n_new) and torch.equal(fast.pending, general.pending)
        state = fast
    assert state.n_new.tolist() == [3, 4]
