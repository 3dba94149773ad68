"""How many drafts to verify per step: the expected tokens per unit of verify cost, maximised.

A verify pass over ``T = 1 + w`` new tokens per row does not cost the same as a one-token step. On
the CPU (one MKL thread, SmolLM2-135M fp32, 200 cached columns, medians of 7 interleaved runs) we
measured, in ms per pass (with the log-softmax):

=========  =====  =====  =====  =====  =====  =====
rows \\ T     1      2      4      8     12     16
=========  =====  =====  =====  =====  =====  =====
1           101    151    150    189    214    249
4           154    202    241    297    383    467
=========  =====  =====  =====  =====  =====  =====

A one-token step is a matrix-vector product per weight matrix; from two tokens on, BLAS packs every
weight matrix first (~50% more memory traffic), then each further token adds a little compute. So
drafting at all costs a fixed ~0.45 one-token steps, and each further row-token ~0.07: a draft
pays off only where it is likely to be accepted, and a draft worth verifying is worth verifying
long. On CUDA (graph-captured verify buckets) a few more tokens are nearly free.

:class:`VerifyCost` models a pass over ``rows`` rows and ``w`` drafts per row, in units of a
one-token pass of one row: ``1 + row * (rows - 1)`` plus, when ``w > 0``, ``overhead + token *
rows * w``. :class:`CostAwareLength` keeps, per *bucket* of drafts (for prompt lookup: the length
of the matched n-gram; 0 for proposers without buckets), running estimates of the probability
that a row's first draft is accepted and that a further draft is accepted once the previous ones
were (Beta priors, updated from every verification). Each step it picks the width ``W`` (0 = a
plain one-token step) maximising ``sum_r x_r (1 + E[accepted_r | W]) / cost(rows, W)`` where
``E[accepted_r | W] = p1 * (1 - pc^w) / (1 - pc)``, ``w = min(W, drafts of row r)``: in a batch
every row pays for the widest row, so the width is chosen for the batch as a whole; ``x_r`` weighs
the rows (0 = finished; :mod:`.width` weighs rows that are ahead of the slowest less).

Measured (``benchmarks/bench_speculative.py``, 8 grounded prompts, 64 new tokens, one thread;
before: the schedule, drafts of up to 16): prompt lookup 1.28x -> 1.46x greedy's speed in batch 1
(1.55x in a 2-round run; 1.02x -> 1.24x transformers' prompt lookup; acceptance rate 0.26 -> 0.50),
0.71x -> 0.94x in batches of 4 (each batch waits for a row that copies little; 1.03x since
finished rows leave the batch, :mod:`decodekit.compaction`).

The older rule (``draft_policy="schedule"``: grow by 2 when some row accepts its whole draft, else
shrink by 1, as BASS and transformers' heuristic schedule do) is :class:`Schedule`.

Example:
    >>> policy = CostAwareLength(8, CPU_COST, priors={3: (0.9, 0.9), 1: (0.2, 0.6)})
    >>> policy.choose(counts=[8], buckets=[3], weights=[1.0])   # a 3-gram match: verify it long
    8
    >>> policy.choose(counts=[8], buckets=[1], weights=[1.0])   # a 1-gram match: not worth a wider pass
    0
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VerifyCost", "CPU_COST", "CUDA_COST", "CostAwareLength", "Schedule", "cost_of_device"]


@dataclass(frozen=True)
class VerifyCost:
    """Cost of a verify pass, in one-token passes of one row (see the module docstring)."""

    row: float  # each further row of a one-token pass
    overhead: float  # any pass with drafts (T >= 2), once per pass
    token: float  # each draft position of each row (all rows pay for the widest)

    def of(self, rows: int, width: int) -> float:
        base = 1.0 + self.row * (rows - 1)
        return base if width <= 0 else base + self.overhead + self.token * rows * width


# fitted to the one-row CPU costs of the module docstring (1 + 0.43 + 0.07 w: 1.50 at w = 1, 2.55 at
# w = 16); four rows cost less per row-token (0.05), so batches draft a little too rarely. CUDA:
# captured verify graphs, a guess kept small
CPU_COST = VerifyCost(row=0.2, overhead=0.43, token=0.07)
CUDA_COST = VerifyCost(row=0.02, overhead=0.05, token=0.005)


def cost_of_device(device_type: str, override: tuple = ()) -> VerifyCost:
    """The configured cost ``(row, overhead, token)``, else the device's default."""
    if override:
        return VerifyCost(*map(float, override))
    return CPU_COST if device_type == "cpu" else CUDA_COST


class _Beta:
    """Successes / trials with a prior of ``weight`` pseudo-trials at ``mean``."""

    def __init__(self, mean: float, weight: float = 4.0):
        self.hits, self.trials = mean * weight, weight

    @property
    def mean(self) -> float:
        return self.hits / self.trials

    def add(self, hits: int, trials: int) -> None:
        self.hits += hits
        self.trials += trials


class CostAwareLength:
    """Per-decode draft width for the batch: expected tokens per unit of verify cost, maximised.

    ``priors`` maps a bucket to ``(p_first, p_next)``; unknown buckets start at ``default``.
    """

    def __init__(self, max_tokens: int, cost: VerifyCost, priors: dict[int, tuple[float, float]] | None = None,
                 default: tuple[float, float] = (0.5, 0.8)):
        self.max_tokens = max_tokens
        self.cost = cost
        self.default = default
        self.first: dict[int, _Beta] = {}
        self.next: dict[int, _Beta] = {}
        for bucket, (p1, pc) in (priors or {}).items():
            self.first[bucket], self.next[bucket] = _Beta(p1), _Beta(pc)

    def _est(self, bucket: int) -> tuple[_Beta, _Beta]:
        if bucket not in self.first:
            self.first[bucket], self.next[bucket] = _Beta(self.default[0]), _Beta(self.default[1])
        return self.first[bucket], self.next[bucket]

    def expected(self, bucket: int, w: int) -> float:
        """Expected accepted drafts of a row verifying ``w`` drafts of ``bucket``."""
        first, nxt = self._est(bucket)
        p1, pc = first.mean, min(nxt.mean, 0.999)
        return p1 * (1.0 - pc ** w) / (1.0 - pc) if w > 0 else 0.0

    def choose(self, counts: list[int], buckets: list[int], weights: list[float]) -> int:
        """The width (0..max_tokens) for rows with ``counts`` drafts available in ``buckets``;
        a row's tokens count ``weights[r]`` (0 for finished rows); every row pays for the width."""
        rows = len(counts)
        running = sum(weights)
        best, best_w = running / self.cost.of(rows, 0), 0
        top = min(max(counts, default=0), self.max_tokens)
        for w in range(1, top + 1):
            gain = running + sum(x * self.expected(b, min(w, c)) for c, b, x in zip(counts, buckets, weights) if c > 0)
            value = gain / self.cost.of(rows, w)
            if value > best:
                best, best_w = value, w
        return best_w

    def observe(self, widths: list[int], accepted: list[int], buckets: list[int]) -> None:
        """Rows that verified ``widths`` drafts of ``buckets`` accepted ``accepted``."""
        for w, a, b in zip(widths, accepted, buckets):
            if w <= 0:
                continue
            first, nxt = self._est(b)
            first.add(int(a > 0), 1)
            if a > 0 and w > 1:  # drafts 2..min(a + 1, w) were tried after an accepted one
                nxt.add(a - 1, min(a, w - 1))


class Schedule:
    """The heuristic schedule: grow by 2 when some row accepts its whole draft, else shrink by 1."""

    def __init__(self, start: int, max_tokens: int):
        self.k = start
        self.max_tokens = max_tokens

    def choose(self, counts: list[int], buckets: list[int], weights: list[float]) -> int:
        return min(self.k, max(counts, default=0))

    def observe(self, widths: list[int], accepted: list[int], buckets: list[int]) -> None:
        tried = [(w, a) for w, a in zip(widths, accepted) if w > 0]
        if tried:
            full = any(a == w for w, a in tried)
            self.k = min(self.k + 2, self.max_tokens) if full else max(self.k - 1, 1)
