"""The fast path: a static KV cache with CUDA-graph capture of the decode and verify forwards.

On CUDA an :class:`~decodekit.lm.LM` hands out :class:`FastCache` objects from its
:class:`FastPath` (``LM(..., cuda_graphs=False)`` or ``lm.cuda_graphs = False`` turns it off). Every
strategy then runs over it unchanged: ``LM.forward`` and the cache ops dispatch to it, and forwards
of up to ``max_graph_tokens`` new tokens replay a graph captured per batch-size bucket and width.

Files: ``attention`` (4-D bias, positions, the transformers Cache adapter), ``slab`` (preallocated
K/V per bucket, static inputs, capture and replay), ``cache`` (the handle a decode holds),
``path`` (the per-model pool and options), ``fused`` (the fused Llama-family step), ``kernels``
(its Triton kernels), ``launch`` (how they are launched: compile-only, warm-up, programmatic
dependent launch), ``gemv`` (GEMV kernels with the norm / activation / residual inside),
``step_graph`` (whole loop steps from graphs, following a strategy's plan), ``token_step`` (a
single-token step's bookkeeping in one kernel), ``pick`` (greedy's token and its log-prob in one
kernel), ``lookup_step`` (prompt lookup's step tail in one kernel), ``row_copy`` (beam search's
in-place KV row moves in one kernel), ``precompile`` (the Triton kernels compiled ahead,
concurrently), ``forked_compiles`` (those compiles in forked children), ``ahead`` (the kernels
compiled from a model's config while its weights load).
"""

from decodekit.fast.cache import FastCache
from decodekit.fast.path import FastPath, unsupported_reason
from decodekit.fast.slab import bucket

__all__ = ["FastCache", "FastPath", "bucket", "unsupported_reason"]
