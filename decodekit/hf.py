"""transformers integration: ``model.generate(custom_generate=...)``, pipelines, HF processors,
stopping criteria and streamers.

Example:
    >>> import decodekit.hf
    >>> out = model.generate(**inputs, max_new_tokens=32,                             # doctest: +SKIP
    ...                      custom_generate=decodekit.hf.custom_generate("sample", temperature=0.7),
    ...                      seed=0)
    >>> pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok)  # doctest: +SKIP
    >>> pipe("Hello", custom_generate=decodekit.hf.custom_generate("greedy"), max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from decodekit.processors import History
from decodekit.state import Candidate, DecodeState
from decodekit.streaming import Stream

__all__ = ["custom_generate", "adapt_processor", "adapt_stopping", "adapt_stream"]

# HF criteria that decodekit's own stopping already implements (length, EOS, stop strings)
_BUILT_IN_CRITERIA = ("MaxLengthCriteria", "EosTokenCriteria", "StopStringCriteria", "MaxTimeCriteria")


def custom_generate(strategy: str = "greedy", *, tokenizer=None, seed: int | None = None,
                    monitors=(), **config: Any):
    """A decoding function for ``model.generate(custom_generate=...)`` that runs decodekit's loop.

    transformers prepares the inputs, the generation config, logits processors and stopping
    criteria; decodekit then decodes with ``strategy`` (and ``config``) and returns the sequences
    (prompt + new tokens, right-padded) as ``generate`` does. Length, EOS and stop strings come from
    the generation config; extra processors and criteria (``logits_processor=...``) are applied.

    Args:
        strategy: a decodekit strategy name; ``config`` its options.
        tokenizer: needed for stop strings (else taken from ``generate(tokenizer=...)`` if given).
        seed: seeds the strategy's random draws.
        monitors: decodekit monitors to run in the loop.
    """
    from decodekit.api import make_strategy

    strat = make_strategy(strategy, config)  # validate now, not at the first generate call

    def decodekit_generate(model, input_ids, logits_processor=None, stopping_criteria=None,
                           generation_config=None, synced_gpus=False, streamer=None, **model_kwargs):
        from decodekit.lm import LM
        from decodekit.loop import run
        from decodekit.stopping import Stopping

        gc = generation_config or model.generation_config
        tok = tokenizer or model_kwargs.get("tokenizer") or _IdsOnlyTokenizer(gc)
        lm = LM(model, tok)
        mask = model_kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
        max_new = int(gc.max_length) - input_ids.shape[1]
        if gc.max_new_tokens is not None:
            max_new = int(gc.max_new_tokens)
        eos = gc.eos_token_id if gc.eos_token_id is not None else lm.eos_token_ids
        stops = gc.stop_strings or ()
        if stops and isinstance(tok, _IdsOnlyTokenizer):
            raise ValueError("stop_strings need a tokenizer: custom_generate(..., tokenizer=tok)")
        criteria = [adapt_stopping(c) for c in (stopping_criteria or ())
                    if type(c).__name__ not in _BUILT_IN_CRITERIA]
        generator = None if seed is None else torch.Generator(device=lm.device).manual_seed(seed)
        gen = run(
            lm, strat, prompts, max_new_tokens=max(1, max_new),
            stopping=Stopping(eos if isinstance(eos, (list, tuple)) else [eos], stops, criteria),
            monitors=tuple(monitors),
            stream=_TokenStream(streamer, put_prompt=None) if streamer is not None else None,
            generator=generator,
            user_processors=tuple(adapt_processor(p) for p in (logits_processor or ())),
        )
        return _as_sequences(input_ids, gen, lm.pad_token_id)

    decodekit_generate.strategy = strat
    return decodekit_generate


def _as_sequences(input_ids: torch.Tensor, gen, pad: int) -> torch.Tensor:
    """[rows, P] prompt + each prompt's best new tokens, right-padded: [rows, P + longest]."""
    news = [c[0].token_ids for c in gen.candidates]
    width = max((len(n) for n in news), default=0)
    out = torch.full((input_ids.shape[0], input_ids.shape[1] + width), pad, dtype=input_ids.dtype,
                     device=input_ids.device)
    out[:, : input_ids.shape[1]] = input_ids
    for r, n in enumerate(news):
        if n:
            out[r, input_ids.shape[1]: input_ids.shape[1] + len(n)] = torch.tensor(n, dtype=input_ids.dtype)
    return out


class _IdsOnlyTokenizer:
    """Stands in when generate() got no tokenizer: decodekit then returns token ids, empty texts."""

    chat_template = None

    def __init__(self, generation_config):
        pad = generation_config.pad_token_id
        self.pad_token_id = pad if isinstance(pad, int) else None
        self.eos_token_id = None

    def decode(self, ids, **_) -> str:
        return ""


# ---------------------------------------------------------------------- adapters
class _HFProcessor:
    """A transformers ``LogitsProcessor`` as a decodekit processor (it sees the padded history)."""

    needs_history = True

    def __init__(self, proc):
        self.proc = proc

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        if history is None:
            raise ValueError("a transformers LogitsProcessor needs the token history")
        width = int(history.end.max())
        ids = history.ids[:, :width]  # [rows, width]: left-padded prompt + generated, as HF sees it
        return self.proc(ids, logits)


def adapt_processor(proc):
    """Accept decodekit processors as they are and wrap transformers ``LogitsProcessor`` objects."""
    if getattr(proc, "needs_history", None) is not None:
        return proc
    if callable(proc):
        return _HFProcessor(proc)
    raise TypeError(f"logits_processor items must be callable processors, got {type(proc).__name__}")


def adapt_stopping(crit):
    """Wrap a transformers ``StoppingCriteria`` as ``state -> [rows] bool``."""
    if not callable(crit):
        raise TypeError(f"stopping_criteria items must be callable, got {type(crit).__name__}")

    def check(state: DecodeState) -> torch.Tensor:
        width = int(state.end.max())
        ids = state.ids[:, :width]
        scores = state.next_logits
        result = crit(ids, scores)
        if isinstance(result, bool):
            return torch.full((state.rows,), result, dtype=torch.bool)
        return torch.as_tensor(result, dtype=torch.bool).reshape(-1).expand(state.rows)

    return check


def adapt_stream(stream, lm, n_prompts: int):
    """A callback ``(prompt_index, text)`` or a transformers streamer (``put`` / ``end``)."""
    if hasattr(stream, "put") and hasattr(stream, "end"):
        if n_prompts != 1:
            raise ValueError("transformers streamers handle one prompt; use a callback(prompt_index, text)")
        return _TokenStream(stream, put_prompt=True)
    return Stream(stream)


class _TokenStream:
    """Feeds new token ids of row 0 to a transformers streamer."""

    def __init__(self, streamer, put_prompt: bool | None):
        self.streamer = streamer
        self.put_prompt = put_prompt
        self.sent = 0

    def update(self, state: DecodeState) -> None:
        if self.put_prompt:
            self.streamer.put(state.ids[0, state.start[0]: state.prompt_width].cpu())
            self.put_prompt = False
        if state.rows != int(state.prompt_of_row.max()) + 1:
            return
        n = int(state.n_new[0])
        if n > self.sent:
            self.streamer.put(state.ids[0, state.prompt_width + self.sent: state.prompt_width + n].cpu())
        self.sent = min(self.sent, n) if n < self.sent else n

    def close(self, state: DecodeState, candidates: list[list[Candidate]]) -> None:
        if self.put_prompt:
            self.update(state)
        best = candidates[0][0].token_ids
        if len(best) > self.sent:
            self.streamer.put(torch.tensor(best[self.sent:]))
        self.streamer.end()
