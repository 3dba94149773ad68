"""CUDA-graph path == eager path, on a GPU. Skipped without CUDA.

* graph vs eager ``DynamicCache`` (``cuda_graphs=False``): token-identical, fp32;
* graph vs the same static path without capture: bitwise-equal log-probs (same kernels), also bf16
  (with cuBLAS's workspace pinned, see conftest.py: eager cuBLAS is otherwise not deterministic);
for greedy and seeded sampling (and beam / prompt lookup when registered), batch sizes 1 and 4, on a
tiny random Llama and on the real default model (when its GGUF file is on the machine).
"""

from __future__ import annotations

import copy

import pytest
import torch

import decodekit
from decodekit.fast import FastPath
from tests.toy import tiny_model, ByteTokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = ["Hello there", "Name a colour.", "The quick brown fox jumps", "1 2 3 4"]
CASES = [("greedy", {}), ("sample", {"seed": 7, "temperature": 0.9, "top_p": 0.95})]


def _extra_cases():
    """Every other strategy whose forwards run on the graph path (beam reorders the slab in place;
    the speculative family verifies k + 1 tokens, and its draft model decodes on its own graphs)."""
    return [
        ("beam", {"num_beams": 4}),
        ("diverse_beam", {"num_beams": 4, "num_beam_groups": 2}),
        # the cost-aware width on both paths (the default, "auto", replays whole steps at a fixed width
        # on the graph path only: tests/fast/test_step_graph_gpu.py)
        ("prompt_lookup", {"seed": 0, "draft_policy": "cost"}),
        ("prompt_lookup", {"seed": 3, "do_sample": True, "temperature": 0.8}),
        ("blockwise", {"seed": 0}),
        ("self_speculative", {"seed": 0, "draft_layers": 1}),
    ]


def _run(lm, mode, prompts, strategy, kw, n=32):
    """mode: "eager" (DynamicCache), "static" (static cache, no graphs) or "graph"."""
    lm.cuda_graphs = mode != "eager"
    if mode == "static":
        lm.fast = FastPath(lm, capture=False)
    elif mode == "graph" and (lm.fast is None or not lm.fast.capture):
        lm.fast = FastPath(lm)
    return decodekit.generate(lm, prompts, strategy, max_new_tokens=n, **kw)


@pytest.fixture(scope="module")
def tiny_cuda():
    return decodekit.load(tiny_model(seed=0).to("cuda"), ByteTokenizer())


@pytest.fixture(scope="module")
def real_cuda():
    """The default model, dequantised to a plain dense fp32 model on the GPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from decodekit.models import default_model_path

    try:
        path = default_model_path()
    except decodekit.ModelNotFoundError as exc:
        pytest.skip(f"default model not on this machine: {exc}")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True,
                                                 dtype=torch.float32, quantization_config=GgufConfig(dequantize=True))
    return decodekit.load(model.to("cuda"), tok)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("strategy,kw", CASES + _extra_cases())
def test_tiny_graph_equals_eager(tiny_cuda, strategy, kw, batch):
    prompts = PROMPTS[:batch]
    eager = _run(tiny_cuda, "eager", prompts, strategy, kw)
    static = _run(tiny_cuda, "static", prompts, strategy, kw)
    graph = _run(tiny_cuda, "graph", prompts, strategy, kw)
    assert tiny_cuda.fast.captures > 0
    assert graph.token_ids == eager.token_ids
    assert graph.token_ids == static.token_ids and graph.logprobs == static.logprobs  # bitwise


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kw", [{"seed": 0}, {"seed": 5, "do_sample": True, "temperature": 0.9}])
def test_tiny_draft_model_graph_equals_eager(tiny_cuda, kw, batch):
    """A draft model decodes on its own graphs; the target verifies on its own."""
    draft = decodekit.load(tiny_model(seed=1).to("cuda"), ByteTokenizer())
    prompts = PROMPTS[:batch]
    outs = {}
    for mode in ("eager", "static", "graph"):
        draft.cuda_graphs = mode != "eager"
        if mode == "static":
            draft.fast = FastPath(draft, capture=False)
        elif mode == "graph":
            draft.fast = FastPath(draft)
        outs[mode] = _run(tiny_cuda, mode, prompts, "speculative", dict(kw, draft=draft, draft_tokens=3))
    assert draft.fast.captures > 0
    assert outs["graph"].token_ids == outs["eager"].token_ids
    assert outs["graph"].token_ids == outs["static"].token_ids
    assert outs["graph"].logprobs == outs["static"].logprobs


def test_graphs_are_reused(tiny_cuda):
    _run(tiny_cuda, "graph", PROMPTS[:2], "greedy", {})
    captures = tiny_cuda.fast.captures
    _run(tiny_cuda, "graph", PROMPTS[:2], "greedy", {})
    assert tiny_cuda.fast.captures == captures


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("strategy,kw", CASES)
def test_real_model_graph_equals_eager(real_cuda, strategy, kw, batch):
    prompts = PROMPTS[:batch]
    eager = _run(real_cuda, "eager", prompts, strategy, kw, n=48)
    graph = _run(real_cuda, "graph", prompts, strategy, kw, n=48)
    assert graph.token_ids == eager.token_ids


@pytest.mark.slow
@pytest.mark.parametrize("strategy,kw", CASES + _extra_cases())
def test_real_model_bf16_graph_equals_static(real_cuda, strategy, kw):
    lm = decodekit.load(copy.deepcopy(real_cuda.model).to(torch.bfloat16), real_cuda.tokenizer)
    static = _run(lm, "static", PROMPTS, strategy, kw, n=48)
    graph = _run(lm, "graph", PROMPTS, strategy, kw, n=48)
    assert graph.token_ids == static.token_ids and graph.logprobs == static.logprobs
