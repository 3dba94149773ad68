"""decodekit's fused Llama step vs transformers' forward, both inside decodekit's CUDA graphs.

Random-weight bf16 models of real shapes (``smol`` = SmolLM2-135M's shape, ``llama-3.1-8b``, ...):
per model and step kind, greedy ms/token (128 tokens, batch 1), first-call time, one graph replay,
kernels per replay and their GPU time, beam 4 ms/token, batch-4 greedy ms/step, and the bandwidth
floor. Needs CUDA.

    python benchmarks/bench_fused.py smol,llama-3.1-8b
"""
import sys
import time
import torch
sys.path.insert(0, "benchmarks")
import bench_gpu as B
import decodekit
from decodekit.fast import FastPath
B.SHAPES["smol"] = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
print(torch.__version__, torch.cuda.get_device_name())
def kernels(fn):
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn(); torch.cuda.synchronize()
    ev = [e for e in p.events() if e.device_type.name == "CUDA"]
    return len(ev), sum(e.device_time for e in ev) / 1e3
for shape in sys.argv[1].split(","):
    lm = decodekit.load(B.random_model(shape), B.IdTokenizer())
    floor = 1e3 * B.param_bytes(lm.model) / 4.23e12
    g = torch.Generator().manual_seed(0)
    p1 = [torch.randint(10, 30000, (40,), generator=g).tolist()]
    p4 = [torch.randint(10, 30000, (n,), generator=g).tolist() for n in (20, 31, 9, 40)]
    never = lm.vocab_size - 1
    ref_unfused = None
    for fused in (False, True):
        lm.fast = FastPath(lm, fused=fused)
        gen = lambda p=p1, n=128, s="greedy", **kw: decodekit.generate(lm, p, s, max_new_tokens=n, eos_token_id=never, **kw)
        t0 = time.perf_counter(); out = gen(); torch.cuda.synchronize(); first = time.perf_counter() - t0
        ref = out.token_ids
        t = B.median_time(gen, 5)
        slab = next(s for v in lm.fast.slabs.values() for s in v)
        gr = slab.graphs[(1, False)].graph
        rep = B.median_time(lambda: [gr.replay() for _ in range(50)], 3) / 50
        nk, kt = kernels(lambda: gr.replay())
        tb = B.median_time(lambda: gen(n=64, s="beam", num_beams=4), 3)
        t4 = B.median_time(lambda: gen(p=p4), 3)
        print(f"{shape} fused={fused}: greedy {1e3*t/128:.3f} ms/tok (first call {first:.2f}s), replay {1e3*rep:.3f} ms, "
              f"{nk} kernels {kt:.3f} ms kernel time, beam4 {1e3*tb/64:.3f} ms/tok, b4 greedy {1e3*t4/128:.3f} ms/step, floor {floor:.3f}", flush=True)
        if fused:
            print("  same tokens as unfused:", ref == ref_unfused)
        else:
            ref_unfused = ref
    lm = None  # the next shape's model replaces this one's
    torch.cuda.empty_cache()
