"""``decodekit.generate``: prompts in, :class:`~decodekit.state.Generation` out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from decodekit.lm import LM
from decodekit.loop import run
from decodekit.monitors.base import Monitor
from decodekit.registry import STRATEGIES
from decodekit.state import Generation
from decodekit.stopping import Stopping
from decodekit.strategies.base import Strategy

__all__ = ["generate", "encode_prompts"]

Prompt = Union[str, Sequence[int], Sequence[dict]]
Prompts = Union[Prompt, Sequence[Prompt], torch.Tensor]


def generate(
    lm: LM,
    prompts: Prompts,
    strategy: str | Strategy = "greedy",
    *,
    max_new_tokens: int = 128,
    seed: int | None = None,
    chat: bool | None = None,
    stream: Callable[[int, str], None] | Any | None = None,
    monitors: Sequence[Monitor] = (),
    stop_strings: Sequence[str] | str = (),
    eos_token_id: int | Sequence[int] | None = None,
    logits_processor: Sequence[Any] = (),
    stopping_criteria: Sequence[Any] = (),
    **config: Any,
) -> Generation:
    """Generate continuations of ``prompts`` with a decoding strategy.

    Args:
        lm: a model from :func:`decodekit.load`.
        prompts: a string, a list of strings, a chat (list of ``{"role", "content"}`` dicts) or a list
            of chats, or token ids (``list[int]``, ``list[list[int]]``, a 1-D or 2-D LongTensor), used
            as given.
        strategy: a registered name (see ``decodekit.strategies.available()``) or a Strategy object.
        max_new_tokens: most new tokens per prompt (also capped by the model's context).
        seed: seeds the strategy's random draws; the same seed gives the same output.
        chat: wrap string prompts in the tokenizer's chat template. ``None`` (default) does so when
            the tokenizer has a template; ``False`` encodes the raw text; ``True`` requires a template.
        stream: ``callback(prompt_index, text_delta)`` called as text is produced, or a transformers
            streamer (``TextStreamer`` ...; one prompt).
        monitors: objects with ``observe(state, step) -> Verdict`` (see ``decodekit.monitors``).
        stop_strings: a row stops once its new text contains one of these.
        eos_token_id: overrides the model's end-of-sequence id(s).
        logits_processor: transformers ``LogitsProcessor`` objects (or decodekit processors), applied
            to the raw logits before the strategy's own processing.
        stopping_criteria: transformers ``StoppingCriteria`` objects.
        **config: the strategy's options, e.g. ``temperature=0.7, top_p=0.9`` for ``"sample"``.

    Returns:
        A :class:`~decodekit.state.Generation`: ``texts``, ``token_ids``, ``logprobs`` (model
        log-prob of each new token), ``candidates`` (all returned sequences, best first) and ``stats``.

    Example:
        >>> import decodekit
        >>> lm = decodekit.load()                                                   # doctest: +SKIP
        >>> decodekit.generate(lm, "What is 2+2?", max_new_tokens=16).text          # doctest: +SKIP
        '2 + 2 = 4.'
        >>> decodekit.generate(lm, ["Hi", "Bye"], "sample", seed=0, temperature=0.7).texts  # doctest: +SKIP
    """
    if not isinstance(lm, LM):
        raise TypeError(
            f"generate() takes an LM from decodekit.load(), got {type(lm).__name__}; "
            "wrap a transformers model with decodekit.load(model, tokenizer)"
        )
    strat = make_strategy(strategy, config)
    _check_int("max_new_tokens", max_new_tokens, 1)
    if seed is not None:
        _check_int("seed", seed, 0)
    token_lists = encode_prompts(lm, prompts, chat=chat)
    _check_context(lm, token_lists)
    from decodekit import hf  # local: hf imports this module

    eos = lm.eos_token_ids if eos_token_id is None else _as_ids(eos_token_id)
    stopping = Stopping(eos, stop_strings, tuple(hf.adapt_stopping(c) for c in stopping_criteria))
    generator = None
    if seed is not None:
        generator = torch.Generator(device=lm.device).manual_seed(seed)
    return run(
        lm, strat, token_lists,
        max_new_tokens=max_new_tokens,
        stopping=stopping,
        monitors=tuple(monitors),
        stream=hf.adapt_stream(stream, lm, len(token_lists)) if stream is not None else None,
        generator=generator,
        user_processors=tuple(hf.adapt_processor(p) for p in logits_processor or ()),
    )


def make_strategy(strategy: str | Strategy, config: dict[str, Any]) -> Strategy:
    """A strategy object from a name and options (or the object itself, with no options)."""
    if isinstance(strategy, Strategy):
        if config:
            raise ValueError(f"options {sorted(config)} given with a Strategy object: set them in its config")
        return strategy
    return STRATEGIES.get(strategy)(**config)


def encode_prompts(lm: LM, prompts: Prompts, *, chat: bool | None = None) -> list[list[int]]:
    """Turn any accepted prompt form into a list of token id lists (one per prompt)."""
    if chat is not None and not isinstance(chat, bool):
        raise TypeError(f"chat must be True, False or None, got {chat!r}")
    items = _split_prompts(prompts)
    if not items:
        raise ValueError("no prompts given: pass a string, a list of strings or token ids")
    out = []
    for i, item in enumerate(items):
        ids = _encode_one(lm, item, chat, i)
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        out.append(ids)
    return out


def _split_prompts(prompts: Prompts) -> list:
    if isinstance(prompts, torch.Tensor):
        if prompts.dtype not in (torch.long, torch.int, torch.int32, torch.int64) or prompts.dim() not in (1, 2):
            raise TypeError(f"a tensor prompt must be 1-D or 2-D integer token ids, got {prompts.dtype} {tuple(prompts.shape)}")
        return [prompts.tolist()] if prompts.dim() == 1 else prompts.tolist()
    if isinstance(prompts, str) or _is_chat(prompts) or _is_ids(prompts):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        return list(prompts)
    raise TypeError(f"prompts must be a string, a list of strings, a chat or token ids, got {type(prompts).__name__}")


def _encode_one(lm: LM, item: Any, chat: bool | None, i: int) -> list[int]:
    if isinstance(item, (list, tuple, torch.Tensor)) and len(item) == 0:
        raise ValueError(f"prompt {i} is empty")
    if _is_ids(item):
        vocab = lm.vocab_size
        bad = [t for t in item if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        return [int(t) for t in item]
    if isinstance(item, str):
        if not item.strip():
            raise ValueError(f"prompt {i} is empty")
        if _use_chat(lm, chat):
            return _apply_template(lm, [{"role": "user", "content": item}])
        return list(lm.tokenizer(item).input_ids)
    if _is_chat(item):
        if chat is False:
            raise ValueError(f"prompt {i} is a chat but chat=False")
        if not lm.tokenizer.chat_template:
            raise ValueError(f"prompt {i} is a chat but the tokenizer has no chat template")
        return _apply_template(lm, list(item))
    raise TypeError(
        f"prompt {i} must be a string, a chat (list of role/content dicts) or a list of token ids, "
        f"got {type(item).__name__}: {item!r:.60}"
    )


def _use_chat(lm: LM, chat: bool | None) -> bool:
    has = bool(getattr(lm.tokenizer, "chat_template", None))
    if chat and not has:
        raise ValueError("chat=True but the tokenizer has no chat template")
    return has if chat is None else chat


def _apply_template(lm: LM, messages: list[dict]) -> list[int]:
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(lm.tokenizer(text, add_special_tokens=False).input_ids)


def _is_ids(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _is_chat(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) and "content" in m for m in x)


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _as_ids(value: int | Sequence[int]) -> tuple[int, ...]:
    ids = (value,) if isinstance(value, int) else tuple(value)
    for t in ids:
        _check_int("eos_token_id", t, 0)
    return ids


def _check_context(lm: LM, token_lists: list[list[int]]) -> None:
    if not lm.max_length:
        return
    for i, ids in enumerate(token_lists):
        if len(ids) >= lm.max_length:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens, but the model's context is {lm.max_length}: "
                "shorten the prompt"
            )
