"""transformers integration: custom_generate, pipelines, HF logits processors / stopping criteria /
streamers, against decodekit.generate and transformers' own greedy search.

Most tests use a tiny random Llama (tests/toy.py) with an in-memory byte-level HF tokenizer, so that
pipelines and streamers (which need a real tokenizer) run in a second; the ``slow`` tests check
custom_generate and the pipeline on the default model.
"""

from __future__ import annotations


import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    MaxLengthCriteria,
    NoBadWordsLogitsProcessor,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    SuppressTokensLogitsProcessor,
    TextStreamer,
    pipeline,
)

import decodekit
import decodekit.hf
from tests.toy import EOS, tiny_model

PROMPTS = ["Hello there", "a", "The quick brown fox jumps"]
CHAT = [{"role": "user", "content": "Name three colours."}]


# ---------------------------------------------------------------------- fixtures
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A real HF tokenizer with tests/toy.py's layout: 0 pad, 1 bos, 2 eos, bytes at 3..258."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: b + 3 for b, c in _bytes_to_unicode().items()}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return tok


@pytest.fixture(scope="module")
def lm() -> decodekit.LM:
    return decodekit.load(tiny_model(), byte_tokenizer())


def _padded(lm: decodekit.LM, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-padded input_ids [rows, P] and attention_mask [rows, P], and the unpadded token lists."""
    lists = [lm.tokenizer(p).input_ids for p in prompts]
    enc = lm.encode(lists)
    return enc.ids, enc.mask, lists


def _new(out: torch.Tensor, width: int, pad: int | None = None, eos: int = EOS) -> list[list[int]]:
    """New tokens of generate()'s [rows, width + n] output, cut after each row's first EOS."""
    rows = []
    for row in out[:, width:].tolist():
        if eos in row:
            row = row[: row.index(eos) + 1]
        rows.append(row)
    return rows


def _hf_greedy(lm, ids, mask=None, **kw) -> torch.Tensor:
    return lm.model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=lm.pad_token_id, **kw)


class StopAfterToken(StoppingCriteria):
    """Per row: stop once the last token is ``token``."""

    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


# ---------------------------------------------------------------------- custom_generate
def test_custom_generate_greedy_equals_decodekit_and_transformers(lm):
    ids = torch.tensor([lm.tokenizer(PROMPTS[0]).input_ids])
    ref = decodekit.generate(lm, ids, "greedy", max_new_tokens=24)
    out = lm.model.generate(ids, custom_generate=decodekit.hf.custom_generate("greedy"), max_new_tokens=24)
    assert _new(out, ids.shape[1]) == ref.token_ids
    assert out.tolist() == _hf_greedy(lm, ids, max_new_tokens=24).tolist()


def test_custom_generate_left_padded_batch(lm):
    ids, mask, lists = _padded(lm, PROMPTS)
    assert bool((mask == 0).any())  # really padded
    ref = decodekit.generate(lm, lists, "greedy", max_new_tokens=20)
    out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=20,
                            custom_generate=decodekit.hf.custom_generate("greedy"))
    assert _new(out, ids.shape[1]) == ref.token_ids
    assert out.tolist() == _hf_greedy(lm, ids, mask, max_new_tokens=20).tolist()
    one_by_one = [decodekit.generate(lm, [t], max_new_tokens=20).token_ids[0] for t in lists]
    assert ref.token_ids == one_by_one


def test_custom_generate_sample_same_seed_same_tokens(lm):
    ids, mask, lists = _padded(lm, PROMPTS)
    cg = decodekit.hf.custom_generate("sample", seed=3, temperature=0.9, top_k=50)
    a = lm.model.generate(ids, attention_mask=mask, custom_generate=cg, max_new_tokens=16)
    b = lm.model.generate(ids, attention_mask=mask, custom_generate=cg, max_new_tokens=16)
    ref = decodekit.generate(lm, lists, "sample", seed=3, temperature=0.9, top_k=50, max_new_tokens=16)
    assert a.tolist() == b.tolist()
    assert _new(a, ids.shape[1]) == ref.token_ids
    # the call-time seed overrides the default one
    c = lm.model.generate(ids, attention_mask=mask, custom_generate=cg, max_new_tokens=16, seed=4)
    ref4 = decodekit.generate(lm, lists, "sample", seed=4, temperature=0.9, top_k=50, max_new_tokens=16)
    assert _new(c, ids.shape[1]) == ref4.token_ids != ref.token_ids


def test_custom_generate_ignores_sampling_flags_of_the_config(lm):
    """The strategy is the mode: do_sample/temperature/top_k in generate() do not change greedy."""
    ids = torch.tensor([lm.tokenizer(PROMPTS[2]).input_ids])
    cg = decodekit.hf.custom_generate("sample", seed=0)
    plain = lm.model.generate(ids, custom_generate=cg, max_new_tokens=16)
    flagged = lm.model.generate(ids, custom_generate=cg, max_new_tokens=16, do_sample=True, temperature=0.3, top_k=2)
    assert plain.tolist() == flagged.tolist()


def test_custom_generate_honours_config_processors_like_transformers(lm):
    ids = torch.tensor([lm.tokenizer(PROMPTS[0]).input_ids])
    free = _hf_greedy(lm, ids, max_new_tokens=12)
    banned = [[t] for t in sorted(set(free[0, ids.shape[1]:].tolist()))[:2]]
    want = _hf_greedy(lm, ids, max_new_tokens=12, bad_words_ids=banned, repetition_penalty=1.3)
    got = lm.model.generate(ids, custom_generate=decodekit.hf.custom_generate("greedy"), max_new_tokens=12,
                            bad_words_ids=banned, repetition_penalty=1.3)
    assert got.tolist() == want.tolist() != free.tolist()


def test_custom_generate_eos_and_max_length(lm):
    ids, mask, _ = _padded(lm, PROMPTS)
    free = lm.model.generate(ids, attention_mask=mask, custom_generate=decodekit.hf.custom_generate(), max_new_tokens=10)
    eos = int(free[1, ids.shape[1] + 3])  # a token row 1 produces: treat it as EOS
    kw = dict(eos_token_id=eos, max_length=ids.shape[1] + 10)
    want = _hf_greedy(lm, ids, mask, **kw)
    got = lm.model.generate(ids, attention_mask=mask, custom_generate=decodekit.hf.custom_generate(), **kw)
    assert got.tolist() == want.tolist()
    assert got.shape[1] <= ids.shape[1] + 10


def test_custom_generate_with_hf_stopping_criteria_like_transformers(lm):
    ids, mask, _ = _padded(lm, PROMPTS)
    free = _hf_greedy(lm, ids, mask, max_new_tokens=12)
    token = int(free[0, ids.shape[1] + 2])
    crit = [StopAfterToken(token), MaxLengthCriteria(max_length=ids.shape[1] + 8)]  # 8 < max_new_tokens
    want = _hf_greedy(lm, ids, mask, max_new_tokens=12, stopping_criteria=crit)
    got = lm.model.generate(ids, attention_mask=mask, max_new_tokens=12, stopping_criteria=crit,
                            custom_generate=decodekit.hf.custom_generate("greedy"))
    assert got.tolist() == want.tolist()
    assert got.shape[1] <= ids.shape[1] + 8


def test_custom_generate_return_dict_and_training_mode(lm):
    ids = torch.tensor([lm.tokenizer(PROMPTS[0]).input_ids])
    lm.model.train()
    try:
        out = lm.model.generate(ids, custom_generate=decodekit.hf.custom_generate(), max_new_tokens=5,
                                return_dict_in_generate=True)
        assert lm.model.training  # decodekit's LM switched to eval for the call only
    finally:
        lm.model.eval()
    assert out.sequences.shape == (1, ids.shape[1] + 5)


def test_custom_generate_stream_and_stop_strings(lm, capsys):
    ids = torch.tensor([lm.tokenizer(PROMPTS[2]).input_ids])
    cg = decodekit.hf.custom_generate("greedy")
    out = lm.model.generate(ids, custom_generate=cg, max_new_tokens=20,
                            stream=TextStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True))
    text = lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert capsys.readouterr().out == text + "\n"
    pieces: list[str] = []
    lm.model.generate(ids, custom_generate=decodekit.hf.custom_generate(tokenizer=lm.tokenizer), max_new_tokens=20,
                      stream=lambda i, delta: pieces.append(delta))
    assert "".join(pieces) == text and len(pieces) > 1
    # stop strings: a piece of the free-running text stops the row right after it appears
    stop = text[4:6]
    cut = lm.model.generate(ids, custom_generate=decodekit.hf.custom_generate(tokenizer=lm.tokenizer),
                            max_new_tokens=20, stop_strings=[stop])
    cut_ids = cut[0, ids.shape[1]:].tolist()
    cut_text = lm.tokenizer.decode(cut_ids, skip_special_tokens=True)
    assert stop in cut_text and stop not in lm.tokenizer.decode(cut_ids[:-1], skip_special_tokens=True)
    assert cut_ids == out[0, ids.shape[1]: ids.shape[1] + len(cut_ids)].tolist()  # a prefix of the free run
    with pytest.raises(ValueError, match="tokenizer"):
        lm.model.generate(ids, custom_generate=cg, max_new_tokens=4, stop_strings=["x"])


def test_custom_generate_validates_config_at_construction():
    with pytest.raises(ValueError):
        decodekit.hf.custom_generate("sample", temperature=-1.0)
    with pytest.raises(ValueError):
        decodekit.hf.custom_generate("no-such-strategy")


# ---------------------------------------------------------------------- pipeline
def test_pipeline_raw_text_equals_generate(lm):
    pipe = pipeline("text-generation", model=lm.model, tokenizer=lm.tokenizer)
    cg = decodekit.hf.custom_generate("greedy")
    for prompt in PROMPTS:
        # the pipeline encodes raw text without special tokens, as decodekit does with chat=False
        got = pipe(prompt, custom_generate=cg, max_new_tokens=16, return_tensors=True)[0]["generated_token_ids"]
        ref = decodekit.generate(lm, prompt, "greedy", chat=False, max_new_tokens=16)
        prompt_ids = lm.tokenizer(prompt).input_ids
        assert got[: len(prompt_ids)] == prompt_ids
        assert got[len(prompt_ids):] == ref.token_ids[0]


def test_pipeline_chat_and_sampling_equal_generate(lm):
    pipe = pipeline("text-generation", model=lm.model, tokenizer=lm.tokenizer)
    cg = decodekit.hf.custom_generate("sample", seed=1, top_p=0.9)
    # the pipeline applies the chat template to messages, as decodekit does; its default
    # do_sample/temperature=0.7 are the generation config's sampling flags, which decodekit ignores
    got = pipe(CHAT, custom_generate=cg, max_new_tokens=16)[0]["generated_text"][-1]
    ref = decodekit.generate(lm, [CHAT], "sample", seed=1, top_p=0.9, max_new_tokens=16)
    assert got == {"role": "assistant", "content": ref.texts[0]}


# ---------------------------------------------------------------------- HF objects in decodekit.generate
@pytest.mark.parametrize("make", [
    lambda ts: SuppressTokensLogitsProcessor(ts, device="cpu"),
    lambda ts: NoBadWordsLogitsProcessor([[t] for t in ts], eos_token_id=EOS),
])
def test_hf_logits_processor_matches_transformers_greedy(lm, make):
    ids, mask, lists = _padded(lm, PROMPTS)
    free = decodekit.generate(lm, lists, max_new_tokens=12)
    banned = sorted({row[1] for row in free.token_ids if len(row) > 1})
    got = decodekit.generate(lm, lists, max_new_tokens=12, logits_processor=[make(banned)])
    want = _hf_greedy(lm, ids, mask, max_new_tokens=12, logits_processor=[make(banned)])
    assert got.token_ids == _new(want, ids.shape[1])
    assert got.token_ids != free.token_ids
    assert not any(t in banned for row in got.token_ids for t in row)
    # log-probs stay those of the raw model distribution (the processor sees a copy)
    assert all(torch.isfinite(torch.tensor(lp)).all() for lp in got.logprobs)


def test_hf_max_length_criteria_stops_rows(lm):
    ids, mask, lists = _padded(lm, PROMPTS)
    crit = MaxLengthCriteria(max_length=ids.shape[1] + 5)  # counts the padded width, as in transformers
    got = decodekit.generate(lm, lists, max_new_tokens=30, stopping_criteria=[crit])
    assert all(len(t) <= 5 for t in got.token_ids)
    assert got.token_ids == [t[:5] for t in decodekit.generate(lm, lists, max_new_tokens=30).token_ids]


def test_hf_custom_stopping_criteria_stops_rows_like_transformers(lm):
    ids, mask, lists = _padded(lm, PROMPTS)
    free = decodekit.generate(lm, lists, max_new_tokens=16)
    token = free.token_ids[0][3]
    got = decodekit.generate(lm, lists, max_new_tokens=16, stopping_criteria=[StopAfterToken(token)])
    want = _hf_greedy(lm, ids, mask, max_new_tokens=16, stopping_criteria=[StopAfterToken(token)])
    for r, row in enumerate(free.token_ids):
        k = row.index(token) + 1 if token in row else len(row)
        assert got.token_ids[r] == row[:k]
        assert want[r, ids.shape[1]: ids.shape[1] + k].tolist() == row[:k]
    assert got.finish_reasons[0] == "criteria"


@pytest.mark.parametrize("skip_prompt", [True, False])
def test_text_streamer_prints_the_result(lm, capsys, skip_prompt):
    prompt = PROMPTS[2]
    gen = decodekit.generate(lm, prompt, chat=False, max_new_tokens=24,
                             stream=TextStreamer(lm.tokenizer, skip_prompt=skip_prompt, skip_special_tokens=True))
    printed = capsys.readouterr().out
    assert printed == ("" if skip_prompt else prompt) + gen.text + "\n"


def test_text_streamer_rejects_batches(lm):
    with pytest.raises(ValueError, match="one prompt"):
        decodekit.generate(lm, PROMPTS, max_new_tokens=4, stream=TextStreamer(lm.tokenizer))


def test_callback_stream_concatenates_to_texts(lm):
    pieces: dict[int, list[str]] = {}
    gen = decodekit.generate(lm, PROMPTS, chat=False, max_new_tokens=24,
                             stream=lambda i, delta: pieces.setdefault(i, []).append(delta))
    assert ["".join(pieces.get(i, [])) for i in range(len(PROMPTS))] == gen.texts
    assert max(len(p) for p in pieces.values()) > 1  # really streamed, not one piece at the end


# ---------------------------------------------------------------------- the default model
@pytest.mark.slow
def test_default_model_custom_generate_parity(default_lm):
    lm = default_lm
    prompts = ["What is the capital of France?", "Write a haiku about rain."]
    lists = decodekit.api.encode_prompts(lm, prompts)
    enc = lm.encode(lists)
    ref = decodekit.generate(lm, prompts, "greedy", max_new_tokens=32)
    out = lm.model.generate(enc.ids, attention_mask=enc.mask, max_new_tokens=32,
                            custom_generate=decodekit.hf.custom_generate("greedy"))
    eos = lm.eos_token_ids[0]
    assert _new(out, enc.ids.shape[1], eos=eos) == ref.token_ids
    one = torch.tensor([lists[0]])
    hf = lm.model.generate(one, do_sample=False, max_new_tokens=32)
    assert _new(hf, one.shape[1], eos=eos)[0] == ref.token_ids[0]


@pytest.mark.slow
def test_default_model_pipeline_parity(default_lm):
    lm = default_lm
    pipe = pipeline("text-generation", model=lm.model, tokenizer=lm.tokenizer)
    cg = decodekit.hf.custom_generate("greedy")
    chat = pipe(CHAT, custom_generate=cg, max_new_tokens=32)[0]["generated_text"][-1]["content"]
    assert chat == decodekit.generate(lm, [CHAT], max_new_tokens=32).texts[0]
    raw = pipe("The capital of France is", custom_generate=cg, max_new_tokens=16, return_full_text=False)
    ref = decodekit.generate(lm, "The capital of France is", chat=False, max_new_tokens=16)
    assert raw[0]["generated_text"] == ref.texts[0]
