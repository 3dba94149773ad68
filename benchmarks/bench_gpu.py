"""GPU benchmark of decodekit's fast path against transformers: one run, one table (issue 5).

Models: SmolLM2-135M-Instruct (the real default model, bf16) and random-weight bf16 models of the
Llama-3.2-1B and Llama-3.1-8B shapes built on the GPU. Rows, each measured side by side, in ms per
new token (median of ``--runs`` timed runs after a warm-up run):

* transformers eager greedy; transformers static cache + torch.compile greedy (first call = compile);
* decodekit greedy, eager (``cuda_graphs=False``) and on the graph path (first call incl. capture),
  with whole steps from graphs (the default) and with only the forward from a graph
  (``step_graphs=False``), with decodekit's fused Llama step (the default), without its Triton
  kernels, and with transformers' forward in the graph;
* decodekit greedy with a torch.compile'd step captured in decodekit's graph (``--compile``);
* decodekit beam 4 vs transformers beam 4; decodekit prompt lookup on a summarisation prompt (real
  model) against decodekit greedy on the same prompt, with tokens-identical and mean accepted;
* the bandwidth floor (parameter bytes / measured device copy bandwidth) and each row's ratio to it.

Usage::

    python benchmarks/bench_gpu.py                       # all models, prints the table
    python benchmarks/bench_gpu.py --models smollm2 --out table.md --compile default
    python benchmarks/bench_gpu.py --models smollm2-135m-shape   # SmolLM2's shape, random weights
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import decodekit  # noqa: E402
from decodekit.api import encode_prompts  # noqa: E402
from decodekit.fast import FastPath  # noqa: E402
from decodekit.fast import launch as L  # noqa: E402
from decodekit.strategies.speculative import graph_plan as GP  # noqa: E402

SHAPES = {  # random-weight models of real architectures (default RoPE: timing does not depend on it)
    "smollm2-135m-shape": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                               num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,  # --dry-run
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()

ARTICLE = (
    "The town council of Millbrook voted on Tuesday to convert the old railway depot into a public "
    "library and community centre. The depot, built in 1894, has stood empty since the last passenger "
    "train left the station in 1971. Under the plan, the main hall will hold the library's collection of "
    "forty thousand books, while the former ticket office will become a cafe run by volunteers. The "
    "council expects the work to cost 2.3 million pounds, of which 1.5 million will come from a national "
    "heritage grant and the rest from local donations. Residents have campaigned for a new library since "
    "the previous one closed in 2015 because of a leaking roof. Construction is due to start in the "
    "spring and the library should open in the autumn of next year, the council said."
)


class IdTokenizer:
    """A stand-in tokenizer for random-weight models: prompts are token ids, text is the ids."""

    pad_token_id, eos_token_id, chat_template = 0, None, None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def sync_time(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def median_time(fn, runs: int) -> float:
    """Seconds per call: one warm-up call, then the median of ``runs`` calls."""
    sync_time(fn)
    return statistics.median(sync_time(fn) for _ in range(runs))


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus bytes written (2 GiB buffers)."""
    src = torch.randn(2**28 if DEV == "cuda" else 2**20, device=DEV)  # 1 GiB
    dst = torch.empty_like(src)
    t = median_time(lambda: [dst.copy_(src) for _ in range(10)], 5) / 10
    return 2 * src.numel() * src.element_size() / t


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def random_model(shape: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(DEV):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if DEV == "cuda" else torch.float32)
    return model.eval()


class Bench:
    """Rows of one model. ``floor_ms`` is the bandwidth floor per token."""

    def __init__(self, name: str, lm: decodekit.LM, floor_ms: float, args):
        self.name, self.lm, self.floor_ms, self.args = name, lm, floor_ms, args
        self.never = lm.vocab_size - 1  # an EOS id the decoders (almost) never produce: full-length runs
        self.rows: list[tuple[str, str, float | None, str]] = []

    def add(self, model: str, row: str, ms: float | None, note: str = "") -> None:
        self.rows.append((model, row, ms, note))
        ratio = f"{ms / self.floor_ms:7.1f}x" if ms else "   n/a"
        print(f"  {row:44s} {ms if ms else float('nan'):9.3f} ms/token {ratio}  {note}", flush=True)

    def guarded(self, row: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # one failing row must not cost the table
            self.add(self.name, row, None, f"error: {type(exc).__name__}: {str(exc)[:160]}")

    # ---------------------------------------------------------------- transformers
    def hf_generate(self, ids, **kw):
        model = self.lm.model
        mask = torch.ones_like(ids)
        return model.generate(ids, attention_mask=mask, max_new_tokens=kw.pop("n"), do_sample=False,
                              eos_token_id=self.never, pad_token_id=self.lm.pad_token_id, **kw)

    def hf_rows(self, ids, n: int, nb: int) -> None:
        runs = self.args.runs

        def eager():
            t = median_time(lambda: self.hf_generate(ids, n=n), runs)
            self.add(self.name, "transformers eager greedy", 1e3 * t / n)

        def compiled():
            first = sync_time(lambda: self.hf_generate(ids, n=n, cache_implementation="static"))
            t = median_time(lambda: self.hf_generate(ids, n=n, cache_implementation="static"), runs)
            self.add(self.name, "transformers static+compile greedy", 1e3 * t / n,
                     f"first call {first:.1f} s (compile)")

        def beam():
            t = median_time(lambda: self.hf_generate(ids, n=nb, num_beams=4, early_stopping=False), runs)
            self.hf_beam_ms = 1e3 * t / nb
            self.add(self.name, "transformers beam 4", self.hf_beam_ms)

        self.guarded("transformers eager greedy", eager)
        if DEV == "cuda":  # inductor on CPU is not what this table is about
            self.guarded("transformers static+compile greedy", compiled)
        self.guarded("transformers beam 4", beam)

    # ---------------------------------------------------------------- decodekit
    def dk(self, prompt, strategy="greedy", n=128, eos=True, **kw):
        return decodekit.generate(self.lm, [prompt], strategy, max_new_tokens=n,
                                  eos_token_id=None if eos is True else self.never, **kw)

    def dk_rows(self, prompt, n: int, nb: int) -> None:
        lm, runs = self.lm, self.args.runs

        def eager():
            lm.cuda_graphs = False
            t = median_time(lambda: self.dk(prompt, n=n, eos=False), runs)
            lm.cuda_graphs = True
            self.add(self.name, "decodekit eager greedy", 1e3 * t / n)

        def graph():
            lm.fast = None  # a fresh fast path: the first call pays prefill + capture
            box = []
            first = sync_time(lambda: box.append(self.dk(prompt, n=n, eos=False)))
            cap = lm.fast.capture_s if lm.fast else 0.0
            pre = lm.fast.precompile_s if lm.fast else 0.0
            t = median_time(lambda: self.dk(prompt, n=n, eos=False), runs)
            self.graph_ms = 1e3 * t / n
            self.add(self.name, "decodekit greedy (graph path)", self.graph_ms,
                     f"first call ({n} tokens) {first:.2f} s: prefill {box[0].stats.prefill_time_s:.3f} s, "
                     f"capture {cap:.2f} s, Triton kernels compiled ahead {pre:.2f} s")
            if lm.fast is not None:
                self.where_time_goes()

        def unfused():
            lm.fast = FastPath(lm, fused=False)  # transformers' own forward inside decodekit's graphs
            t = median_time(lambda: self.dk(prompt, n=n, eos=False), runs)
            self.add(self.name, "decodekit greedy (graph path, transformers' forward)", 1e3 * t / n,
                     "fused=False: the model's own layers captured")
            lm.fast = None

        def no_step_graphs():
            lm.fast = FastPath(lm, step_graphs=False)  # only the forward from a graph, the rest eager
            t = median_time(lambda: self.dk(prompt, n=n, eos=False), runs)
            self.add(self.name, "decodekit greedy (graph path, forward only from graphs)", 1e3 * t / n,
                     "step_graphs=False")
            lm.fast = None

        def no_kernels():
            lm.fast = FastPath(lm, kernels=False)  # the fused step without decodekit's Triton kernels
            t = median_time(lambda: self.dk(prompt, n=n, eos=False), runs)
            self.add(self.name, "decodekit greedy (graph path, fused, no Triton kernels)", 1e3 * t / n,
                     "kernels=False")
            lm.fast = None

        def no_pdl():
            was, L.PDL = L.PDL, False  # the kernels launched without programmatic dependent launch
            try:
                lm.fast = FastPath(lm)
                t = median_time(lambda: self.dk(prompt, n=n, eos=False), runs)
            finally:
                L.PDL, lm.fast = was, None
            self.add(self.name, "decodekit greedy (graph path, no PDL)", 1e3 * t / n, "DECODEKIT_PDL=0")

        def beam():
            names = decodekit.strategies.available()
            if "beam" not in names:
                return self.add(self.name, "decodekit beam 4", None, "n/a: no beam strategy registered")
            t = median_time(lambda: self.dk(prompt, "beam", n=nb, eos=False, num_beams=4), runs)
            ms = 1e3 * t / nb
            hf = getattr(self, "hf_beam_ms", None)
            before = lm.fast.graph_steps if lm.fast is not None else 0
            gen = self.dk(prompt, "beam", n=nb, eos=False, num_beams=4)
            whole = (lm.fast.graph_steps if lm.fast is not None else 0) - before
            self.add(self.name, "decodekit beam 4", ms, (f"{hf / ms:.1f}x transformers beam; " if hf else "")
                     + f"{whole} of {gen.stats.steps} steps replayed whole")

        def beam_ordinary():
            lm.fast = FastPath(lm, step_graphs=False)  # the ordinary beam step: forward and reorder from graphs
            t = median_time(lambda: self.dk(prompt, "beam", n=nb, eos=False, num_beams=4), runs)
            ms = 1e3 * t / nb
            hf = getattr(self, "hf_beam_ms", None)
            self.add(self.name, "decodekit beam 4 (forward only from graphs)", ms,
                     (f"{hf / ms:.1f}x transformers beam; " if hf else "") + "step_graphs=False")
            lm.fast = None

        self.guarded("decodekit eager greedy", eager)
        self.guarded("decodekit greedy (graph path)", graph)
        if L.pdl_supported(torch.device("cuda")):
            self.guarded("decodekit greedy (graph path, no PDL)", no_pdl)
        self.guarded("decodekit greedy (graph path, forward only from graphs)", no_step_graphs)
        self.guarded("decodekit greedy (graph path, fused, no Triton kernels)", no_kernels)
        self.guarded("decodekit greedy (graph path, transformers' forward)", unfused)
        for mode in self.args.compile:
            self.guarded(f"decodekit greedy, compile {mode} in graph", lambda m=mode: self.compiled(prompt, n, m))
        lm.fast = None
        self.guarded("decodekit beam 4", beam)
        if "beam" in decodekit.strategies.available():
            self.guarded("decodekit beam 4 (forward only from graphs)", beam_ordinary)

    def compiled(self, prompt, n: int, mode: str) -> None:
        lm = self.lm
        torch._dynamo.reset()
        lm.fast = FastPath(lm, compile=mode)
        first = sync_time(lambda: self.dk(prompt, n=n, eos=False))
        t = median_time(lambda: self.dk(prompt, n=n, eos=False), self.args.runs)
        self.add(self.name, f"decodekit greedy, compile {mode} in graph", 1e3 * t / n,
                 f"first call {first:.1f} s (compile + capture)")
        self.replay_note(lm)
        lm.fast = None

    def prompt_lookup(self, prompt) -> None:
        if "prompt_lookup" not in decodekit.strategies.available():
            return self.add(self.name, "decodekit prompt lookup (summarise)", None, "n/a: not registered")
        runs = self.args.runs
        n = self.args.tokens * 2
        ref = self.dk(prompt, n=n)
        out = self.dk(prompt, "prompt_lookup", n=n)
        n_ref, n_out = len(ref.token_ids[0]), len(out.token_ids[0])
        tg = median_time(lambda: self.dk(prompt, n=n), runs) / n_ref
        tp = median_time(lambda: self.dk(prompt, "prompt_lookup", n=n), runs) / n_out
        acc = out.stats.extra.get("accepted_per_verify", float("nan"))
        same = "identical to greedy" if out.token_ids == ref.token_ids else "DIFFERS from greedy"
        self.add(self.name, "decodekit greedy (summarise prompt)", 1e3 * tg, f"{n_ref} tokens")
        self.add(self.name, "decodekit prompt lookup (summarise)", 1e3 * tp,
                 f"{tg / tp:.2f}x greedy, {same}, mean accepted {acc:.2f}/verify, defaults: "
                 f"{out.stats.extra.get('draft_tokens')} drafts")
        variants = [  # the default (draft_policy="auto"): 3 drafts every step for a small model at batch 1
            # (a 4-token verify on the decode step's kernels), else 4; whole steps from graphs
            ("4 drafts always", dict(graph_draft_tokens=4), False),
            ("4 drafts always, tail as PyTorch ops", dict(graph_draft_tokens=4), True),
            ("3 drafts always (a 4-token verify: the GEMV kernels)", dict(graph_draft_tokens=3), False),
            ("2 drafts always", dict(graph_draft_tokens=2), False),
            ("cost-aware width", dict(draft_policy="cost"), False),
            ("8 drafts always", dict(draft_policy="schedule", draft_tokens=8, adaptive=False), False),
            ("12 drafts always", dict(draft_policy="schedule", draft_tokens=12, adaptive=False), False)]
        for label, kw, torch_tail in variants:
            GP.LOOKUP_STEP = not torch_tail
            steps0 = self.lm.fast.graph_steps if self.lm.fast else 0
            out = self.dk(prompt, "prompt_lookup", n=n, **kw)
            graphed = (self.lm.fast.graph_steps if self.lm.fast else 0) > steps0
            ts = median_time(lambda: self.dk(prompt, "prompt_lookup", n=n, **kw), runs) / len(out.token_ids[0])
            GP.LOOKUP_STEP = True
            acc = out.stats.extra.get("accepted_per_verify", float("nan"))
            same = "identical to greedy" if out.token_ids == ref.token_ids else "DIFFERS from greedy"
            self.add(self.name, f"decodekit prompt lookup, {label}", 1e3 * ts,
                     f"{tg / ts:.2f}x greedy, {same}, mean accepted {acc:.2f}/verify"
                     + (", whole steps from graphs" if graphed else ""))

    def where_time_goes(self) -> None:
        """Kernels of one eager decode forward vs one graph replay vs one decodekit step."""
        slab = next(s for s in self.lm.fast.slabs[1] if (1, False) in s.graphs)
        inp = slab.inputs[1]

        @torch.inference_mode()
        def forward():
            slab._forward(inp.ids, inp.write, inp.view, False, False)

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            forward()
            sync()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(getattr(e, "device_time", 0.0) or getattr(e, "cuda_time", 0.0) for e in kernels) / 1e3
        eager_ms = 1e3 * median_time(forward, 10)
        replay = self.replay_ms(slab)
        self.add(self.name, "  one decode forward, eager", eager_ms, f"{len(kernels)} kernels, {busy:.2f} ms of kernel time")
        self.add(self.name, "  one decode forward, graph replay", replay,
                 f"decodekit step overhead beyond the replay: {self.graph_ms - replay:.2f} ms")

    @staticmethod
    def replay_ms(slab) -> float:
        g = slab.graphs[(1, False)].graph
        return 1e3 * median_time(lambda: [g.replay() for _ in range(50)], 5) / 50

    def replay_note(self, lm) -> None:
        slab = next((s for s in lm.fast.slabs.get(1, []) if (1, False) in s.graphs), None)
        if slab is not None:
            self.add(self.name, "  one decode forward, compiled graph replay", self.replay_ms(slab))


def load_real(dtype: torch.dtype) -> decodekit.LM:
    """The default model (SmolLM2-135M-Instruct GGUF) as a plain dense model: transformers >= 5.17
    would otherwise keep the GGUF blocks packed and run its own dequantising matmul kernels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    from decodekit.models import default_model_path

    hf_logging.disable_progress_bar()

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True, dtype=dtype,
                                                 quantization_config=GgufConfig(dequantize=True))
    return decodekit.load(model.to(DEV).eval(), tok)


def bench_real(args, bw: float) -> list:
    lm = load_real(torch.bfloat16 if DEV == "cuda" else torch.float32)
    print(f"  {type(lm.model).__name__}, linear {type(lm.model.model.layers[0].mlp.down_proj).__name__}, "
          f"attention {lm.config._attn_implementation}", flush=True)
    floor = 1e3 * param_bytes(lm.model) / bw
    b = Bench("SmolLM2-135M", lm, floor, args)
    print(f"SmolLM2-135M-Instruct (bf16): floor {floor:.3f} ms/token", flush=True)
    chat = encode_prompts(lm, "Write a detailed story about a robot who learns to paint.")[0]
    b.hf_rows(torch.tensor([chat], device=DEV), args.tokens, args.beam_tokens)
    b.dk_rows(chat, args.tokens, args.beam_tokens)
    b.guarded("decodekit prompt lookup (summarise)", lambda: b.prompt_lookup(
        encode_prompts(lm, "Summarise the following article.\n\n" + ARTICLE)[0]))
    b.add(b.name, "bandwidth floor", floor, f"{param_bytes(lm.model) / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s")
    return b.rows


def bench_random(args, shape: str, bw: float) -> list:
    model = random_model(shape)
    lm = decodekit.load(model, IdTokenizer())
    floor = 1e3 * param_bytes(model) / bw
    b = Bench(shape, lm, floor, args)
    print(f"{shape} (random bf16): floor {floor:.3f} ms/token", flush=True)
    prompt = torch.randint(10, min(30000, lm.vocab_size), (32,), generator=torch.Generator().manual_seed(0)).tolist()
    b.hf_rows(torch.tensor([prompt], device=DEV), args.tokens, args.beam_tokens)
    b.dk_rows(prompt, args.tokens, args.beam_tokens)
    b.add(b.name, "bandwidth floor", floor, f"{param_bytes(model) / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s")
    del lm, model, b.lm
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return b.rows


def table(rows: list, floors: dict) -> str:
    out = ["| model | row | ms/token | x floor | notes |", "|---|---|---:|---:|---|"]
    for model, row, ms, note in rows:
        ratio = f"{ms / floors[model]:.1f}" if ms else "n/a"
        out.append(f"| {model} | {row.strip()} | {f'{ms:.3f}' if ms else 'n/a'} | {ratio} | {note} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per greedy run")
    ap.add_argument("--beam-tokens", type=int, default=64, help="new tokens per beam run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compile", default="", help="comma list of torch.compile modes to try in the graph")
    ap.add_argument("--out", default="", help="also write the markdown table here")
    ap.add_argument("--dry-run", action="store_true", help="a tiny random model, few tokens (runs on CPU)")
    args = ap.parse_args()
    if args.dry_run:
        args.models, args.tokens, args.beam_tokens, args.runs = "tiny", 8, 4, 1
    args.compile = [m for m in args.compile.split(",") if m]
    try:
        import decodekit.strategies.beam  # noqa: F401  (registers "beam" where it exists)
    except ImportError:
        pass
    import transformers

    print(f"{torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu'}, torch {torch.__version__}, transformers {transformers.__version__}")
    bw = copy_bandwidth()
    print(f"device copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    rows: list = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        rows += bench_real(args, bw) if name == "smollm2" else bench_random(args, name, bw)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    floors = {m: ms for m, r, ms, _ in rows if r == "bandwidth floor"}
    md = table(rows, floors)
    print("\n" + md)
    if args.out:
        Path(args.out).write_text(md + "\n")


if __name__ == "__main__":
    main()
