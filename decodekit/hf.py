"""transformers integration: ``model.generate(custom_generate=...)``, pipelines, HF processors,
stopping criteria and streamers.

``custom_generate(strategy, **config)`` returns a callable for ``model.generate`` (and so for
``pipeline("text-generation")``, which forwards its keyword arguments to ``generate``). transformers
prepares the inputs, the generation config, its logits processors and stopping criteria; decodekit then
decodes with the strategy and returns the sequences (prompt + new tokens, right-padded) as ``generate``
does. A strategy *is* the decoding mode: the generation config's sampling flags (``do_sample``,
``temperature``, ``top_k`` ...) are ignored; its length, EOS ids and other processors / criteria are
honoured.

transformers (5.x) hands a custom_generate callable neither ``streamer`` nor ``tokenizer``. The callable
therefore takes its own call-time keywords, which ``generate`` and pipelines pass through:

* ``seed``: seeds the strategy's random draws (overrides the seed given to ``custom_generate``);
* ``stream``: a transformers streamer (``TextStreamer`` ...) or a callback ``(prompt_index, text)``
  (a ``streamer=`` given to ``generate`` gets the prompt from transformers and nothing more);
* ``stop_strings``: a row stops once its new text contains one of them (needs a tokenizer:
  ``custom_generate(..., tokenizer=tok)``, or the one of a ``stream`` streamer).

Example:
    >>> import decodekit.hf
    >>> out = model.generate(**inputs, max_new_tokens=32,                             # doctest: +SKIP
    ...                      custom_generate=decodekit.hf.custom_generate("sample", temperature=0.7),
    ...                      seed=0, stream=TextStreamer(tok, skip_prompt=True))
    >>> pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok)  # doctest: +SKIP
    >>> pipe("Hello", custom_generate=decodekit.hf.custom_generate("greedy"), max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.generation import logits_process as _lp
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from decodekit.processors import History
from decodekit.state import Candidate, DecodeState
from decodekit.streaming import Stream

__all__ = ["custom_generate", "adapt_processor", "adapt_stopping", "adapt_stream"]

# processors transformers builds from the generation config's sampling flags: a decodekit strategy
# and its config choose tokens instead, so these are left out when ``do_sample`` is set
_SAMPLING_WARPERS = tuple(
    getattr(_lp, name) for name in (
        "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
        "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "TopHLogitsWarper",
    ) if hasattr(_lp, name)
)


def custom_generate(strategy: str = "greedy", *, tokenizer=None, seed: int | None = None,
                    monitors=(), stop_strings: Sequence[str] | str = (), **config: Any):
    """A decoding function for ``model.generate(custom_generate=...)`` that runs decodekit's loop.

    Args:
        strategy: a decodekit strategy name (or Strategy object); ``config`` its options.
        tokenizer: for stop strings and text streaming callbacks (transformers does not pass its own).
        seed: default seed of the strategy's random draws (``generate(..., seed=s)`` overrides it).
        monitors: decodekit monitors to run in the loop.
        stop_strings: default stop strings (``generate(..., stop_strings=[...])`` overrides them).

    Returns:
        ``decodekit_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
        synced_gpus, streamer, *, seed=None, stream=None, stop_strings=None, **model_kwargs)``, the
        signature transformers calls; it returns ``[rows, P + new]`` token ids (or a
        ``GenerateDecoderOnlyOutput`` when ``return_dict_in_generate`` is set).
    """
    from decodekit.api import make_strategy

    strat = make_strategy(strategy, config)  # validate now, not at the first generate call
    default_seed, default_stops, monitors = seed, stop_strings, tuple(monitors)

    def decodekit_generate(model, input_ids, logits_processor=None, stopping_criteria=None,
                           generation_config=None, synced_gpus=False, streamer=None, *,
                           seed: int | None = None, stream=None, stop_strings=None, **model_kwargs):
        from decodekit.loop import run
        from decodekit.stopping import Stopping

        gc = generation_config or model.generation_config
        seed = default_seed if seed is None else seed
        stops = default_stops if stop_strings is None else stop_strings
        tok = tokenizer or getattr(stream, "tokenizer", None) or getattr(streamer, "tokenizer", None)
        if tok is None and (stops or (stream is not None and not _is_streamer(stream))):
            raise ValueError("stop strings and text callbacks need a tokenizer: custom_generate(..., tokenizer=tok)")
        training = model.training
        lm = _lm_for(model, tok, gc)
        model.eval()
        try:
            prompts = _prompts(input_ids, model_kwargs.get("attention_mask"))
            max_new, eos, criteria = _limits(gc, stopping_criteria, input_ids.shape[1])
            if stream is not None:
                stream = adapt_stream(stream, lm, len(prompts))
            elif streamer is not None:  # generate() has already put the prompt
                stream = _TokenStream(streamer, put_prompt=False)
            gen = run(
                lm, strat, prompts, max_new_tokens=max_new,
                stopping=Stopping(eos, stops, criteria),
                monitors=monitors,
                stream=stream,
                generator=None if seed is None else torch.Generator(device=lm.device).manual_seed(seed),
                user_processors=_processors(logits_processor, gc),
            )
        finally:
            model.train(training)
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else lm.pad_token_id)
        sequences = _as_sequences(input_ids, gen, int(pad))
        if gc.return_dict_in_generate:
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            return GenerateDecoderOnlyOutput(sequences=sequences)
        return sequences

    decodekit_generate.strategy = strat
    return decodekit_generate


def _lm_for(model, tokenizer, gc):
    """The model's decodekit LM, kept on the model between calls (its CUDA-graph fast path is then
    built once, not at every ``generate``); a new one when the tokenizer changes."""
    from decodekit.lm import LM

    lm = model.__dict__.get("_decodekit_lm")
    same = lm is not None and (lm.tokenizer is tokenizer or
                               (tokenizer is None and isinstance(lm.tokenizer, _IdsOnlyTokenizer)))
    if not same:
        lm = LM(model, tokenizer if tokenizer is not None else _IdsOnlyTokenizer(gc))
        model.__dict__["_decodekit_lm"] = lm
    return lm


def _prompts(input_ids: torch.Tensor, mask: torch.Tensor | None) -> list[list[int]]:
    """[rows, P] padded ids (+ [rows, P] mask; None = no padding) -> each row's real tokens."""
    if mask is None:
        return input_ids.tolist()
    return [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), mask.cpu())]


def _limits(gc, criteria, width: int) -> tuple[int, tuple[int, ...], list]:
    """Most new tokens, EOS ids and the remaining criteria from transformers' stopping criteria.

    Length and EOS criteria become decodekit's native (per-row, on-device) checks; every other
    criterion (stop strings, max time, the caller's own) is adapted.
    """
    lengths, eos, rest = [], [], []
    for crit in criteria or ():
        if isinstance(crit, MaxLengthCriteria):  # the caller's own replaces the config's (transformers)
            lengths.append(crit.max_length)
        elif isinstance(crit, EosTokenCriteria):
            eos += [t for t in torch.as_tensor(crit.eos_token_id).reshape(-1).tolist() if t not in eos]
        else:
            rest.append(adapt_stopping(crit))
    max_length = min(lengths) if lengths else (gc.max_length if gc.max_length is not None else width + 1)
    # transformers always generates at least one token, even when the prompt fills max_length
    return max(1, int(max_length) - width), tuple(eos), rest


def _processors(processors, gc) -> tuple:
    """transformers' prepared processors, minus the sampling warpers built from the config."""
    keep = [p for p in processors or () if not (gc.do_sample and isinstance(p, _SAMPLING_WARPERS))]
    return tuple(adapt_processor(p) for p in keep)


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
    """Stands in when no tokenizer is known: decodekit then returns token ids and empty texts."""

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
        # a copy: processors may write in place, and the raw logits still give the tokens' log-probs
        return self.proc(ids, logits.clone())  # [rows, vocab]


def adapt_processor(proc):
    """Accept decodekit processors as they are and wrap transformers ``LogitsProcessor`` objects."""
    if getattr(proc, "needs_history", None) is not None:
        return proc
    if callable(proc):
        return _HFProcessor(proc)
    raise TypeError(f"logits_processor items must be callable processors, got {type(proc).__name__}")


def adapt_stopping(crit):
    """Wrap a transformers ``StoppingCriteria`` (``(input_ids, scores) -> [rows] bool``) as
    ``state -> [rows] bool``; it sees the left-padded ids of every row, as in transformers."""
    if not callable(crit):
        raise TypeError(f"stopping_criteria items must be callable, got {type(crit).__name__}")

    def check(state: DecodeState) -> torch.Tensor:
        width = int(state.end.max())
        result = crit(state.ids[:, :width], state.next_logits)  # ids [rows, width], scores [rows, vocab]
        if isinstance(result, bool):
            return torch.full((state.rows,), result, dtype=torch.bool, device=state.done.device)
        return torch.as_tensor(result, dtype=torch.bool).reshape(-1).expand(state.rows)

    return check


def _is_streamer(stream) -> bool:
    return hasattr(stream, "put") and hasattr(stream, "end")


def adapt_stream(stream, lm, n_prompts: int):
    """A callback ``(prompt_index, text)`` or a transformers streamer (``put`` / ``end``)."""
    if _is_streamer(stream):
        if n_prompts != 1:
            raise ValueError("transformers streamers handle one prompt; use a callback(prompt_index, text)")
        return _TokenStream(stream, put_prompt=True)
    return Stream(stream)


class _TokenStream:
    """Feeds the prompt (when asked) and then the new token ids of row 0 to a transformers streamer,
    as ``generate`` does."""

    def __init__(self, streamer, put_prompt: bool):
        self.streamer = streamer
        self.put_prompt = put_prompt
        self.sent = 0

    def update(self, state: DecodeState) -> None:
        if self.put_prompt:
            self.streamer.put(state.ids[0, int(state.start[0]): state.prompt_width].cpu())
            self.put_prompt = False
        if state.rows != int(state.prompt_of_row.max()) + 1:
            return  # several rows per prompt (beams): the best sequence comes at the end
        n = int(state.n_new[0])
        if n > self.sent:
            self.streamer.put(state.ids[0, state.prompt_width + self.sent: state.prompt_width + n].cpu())
        self.sent = n  # after a rollback, the re-generated tokens are put again

    def close(self, state: DecodeState, candidates: list[list[Candidate]]) -> None:
        if self.put_prompt:
            self.update(state)
        best = candidates[0][0].token_ids
        if len(best) > self.sent:
            self.streamer.put(torch.tensor(best[self.sent:]))
        self.streamer.end()
