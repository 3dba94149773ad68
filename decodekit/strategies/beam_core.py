"""What beam search and diverse beam search share: beams as rows, candidate choice, finished
hypotheses, row (and KV-cache) reordering with few copies, and the returned sequences.

Layout. After prefill every prompt's row is repeated ``num_beams`` times. The beams of a prompt are
split into *search units* (one unit per prompt for beam search, one per group for diverse beam
search, Vijayakumar et al. 2016, arXiv:1610.02424); unit ``u = prompt * groups + group`` owns a fixed
set of ``width`` rows. ``Beams.rows_of[u]`` lists them in *logical* order (best running beam first,
the order transformers keeps its beams in); the physical order is free, so that a beam whose parent
is still its own row is not moved at all: a step copies only the cache rows whose content changes.

A step of one set of units (:func:`select`): add each beam's running score to its processed log-probs,
take the best ``k = max(2, 1 + n_eos) * width`` continuations (or sample them without replacement),
mark those that end (EOS, a stop string, the length limit), keep the best ``width`` that do not.
:func:`commit` then offers the ending candidates that rank among the first ``width`` to the unit's
finished hypotheses (:mod:`~decodekit.strategies.beam_hyps`), applies transformers' early-stopping
rules, reorders the rows and returns one token per live row. Live rows never receive EOS: the loop
would cut them.

Example:
    >>> gen = decodekit.generate(lm, "The capital of France is", "beam", num_beams=4,   # doctest: +SKIP
    ...                          num_return_sequences=2, max_new_tokens=16)
    >>> [c.score for c in gen.candidates[0]]    # length-normalised scores, best first  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from decodekit.processors import History
from decodekit.state import Candidate, DecodeState, StepOutput
from decodekit.strategies.beam_hyps import REASONS, Hypotheses, reason_code

__all__ = ["BeamSettings", "Beams", "Selection", "start", "process", "select", "commit", "assign_rows",
           "eligible", "offer", "close", "output", "retire", "finalize"]

_NEG = -1.0e9  # transformers' score of impossible beams


@dataclass(frozen=True)
class BeamSettings:
    num_beams: int
    groups: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    do_sample: bool = False
    flavour: str = "v5"  # "v5": transformers 5.x beam search; "v4": transformers <= 4.56 scorer
    interleaved: bool = False  # group g = beams g, g + G, ... (else contiguous blocks)


@dataclass
class Beams:
    """Per-decode beam bookkeeping, kept in ``state.extra["beams"]``."""

    settings: BeamSettings
    rows_of: torch.Tensor  # [units, width] long: physical row of each beam, best first
    score: torch.Tensor  # [units, width] float32: running score (sum of processed log-probs)
    hyps: Hypotheses
    closed: torch.Tensor  # [units] bool: the unit's search is over
    unit_of_row: torch.Tensor  # [rows] long
    eos: torch.Tensor  # [n_eos] long
    pad: int
    never_denominator: torch.Tensor  # [units]: max_new ** length_penalty (early_stopping="never")
    warpers: tuple = ()  # sampling processors (beam sampling only)

    @property
    def units(self) -> int:
        return self.rows_of.shape[0]

    @property
    def width(self) -> int:
        return self.rows_of.shape[1]

    @property
    def k(self) -> int:  # candidates per unit and step
        return max(2, 1 + self.eos.numel()) * self.width


@dataclass
class Selection:
    """One step of a set of units: its candidates, best first, and the beams kept running."""

    score: torch.Tensor  # [n, k] float32: accumulated score of each candidate
    parent: torch.Tensor  # [n, k] long: physical row each candidate extends
    token: torch.Tensor  # [n, k] long
    logprob: torch.Tensor  # [n, k] float32: raw model log-prob of the token
    hit: torch.Tensor  # [n, k] bool: the candidate ends its sequence
    reason: torch.Tensor  # [n, k] long: why (index into REASONS)
    keep: torch.Tensor  # [n, width] long: candidates kept running, best first
    kept_score: torch.Tensor  # [n, width] float32 (ended candidates carry -1e9, as in transformers)

    def kept(self, name: str) -> torch.Tensor:  # [n, width]: a candidate field of the kept beams
        return getattr(self, name).gather(1, self.keep)

    @staticmethod
    def interleave(groups: list["Selection"]) -> "Selection":
        """Per-group selections over prompts ([prompts, ...] each) -> unit-major ([prompts * G, ...])."""
        out = {}
        for f in fields(Selection):
            t = torch.stack([getattr(s, f.name) for s in groups], 1)  # [prompts, G, ...]
            out[f.name] = t.reshape(-1, *t.shape[2:])
        return Selection(**out)


# ---------------------------------------------------------------------------------------- setup
def start(state: DecodeState, settings: BeamSettings, warpers: tuple = ()) -> Beams:
    """Repeat every prompt's row ``num_beams`` times and set up the bookkeeping."""
    prompts, device = state.rows, state.ids.device
    nb, groups = settings.num_beams, settings.groups
    width = nb // groups
    state.select_rows(torch.arange(prompts, device=device).repeat_interleave(nb))
    g = torch.arange(groups, device=device)[:, None]  # [G, 1]
    i = torch.arange(width, device=device)[None, :]  # [1, width]
    local = g + groups * i if settings.interleaved else g * width + i  # [G, width]
    rows_of = (torch.arange(prompts, device=device)[:, None, None] * nb + local).reshape(-1, width)
    units = rows_of.shape[0]
    unit_of_row = torch.empty(state.rows, dtype=torch.long, device=device)
    unit_of_row[rows_of.flatten()] = torch.arange(units, device=device).repeat_interleave(width)
    score = torch.full((units, width), _NEG, device=device)  # [units, width]
    score[:, 0] = 0.0  # one live beam per unit at first: the copies must not all be continued
    stopping = getattr(state, "stopping", None)
    eos = tuple(stopping.eos_token_ids) if stopping is not None else state.lm.eos_token_ids
    hyps = Hypotheses.empty(units, width, state.logprobs.shape[1], settings.flavour, device)
    limits = state.limit[rows_of[:, 0]].tolist()
    never = torch.tensor([float(n) ** settings.length_penalty for n in limits], dtype=hyps.score.dtype,
                         device=device)  # [units]
    return Beams(settings, rows_of, score, hyps, torch.zeros(units, dtype=torch.bool, device=device),
                 unit_of_row, torch.tensor(eos, dtype=torch.long, device=device), state.lm.pad_token_id,
                 never, warpers)


def process(state: DecodeState, rows: torch.Tensor, scores: torch.Tensor, before: tuple = (),
            after: tuple = ()) -> torch.Tensor:
    """Apply ``before``, the caller's processors, then ``after`` to ``scores [n, V]`` of ``rows [n]``."""
    procs = (*before, *state.user_processors, *after)
    if not procs:
        return scores
    history = History(state.ids.index_select(0, rows), state.start[rows], state.end[rows])
    for proc in procs:
        scores = proc(scores, history)  # [n, V]
    return scores


# ---------------------------------------------------------------------------------------- a step
def select(state: DecodeState, beams: Beams, units: torch.Tensor, scores: torch.Tensor,
           raw_logp: torch.Tensor) -> Selection:
    """Candidates and kept beams of ``units [n]`` from processed log-probs ``scores [n, width, V]``
    (beams in logical order); ``raw_logp [rows, V]`` gives the model log-prob of each token."""
    n, width, vocab = scores.shape
    acc = (scores + beams.score[units][..., None]).reshape(n, width * vocab)  # [n, width * V]
    if beams.settings.do_sample:  # sample k continuations without replacement, then sort them
        idx = torch.multinomial(torch.softmax(acc, -1), beams.k, generator=state.generator)  # [n, k]
        cand, order = acc.gather(1, idx).sort(dim=1, descending=True)  # [n, k]
        idx = idx.gather(1, order)
    else:
        cand, idx = torch.topk(acc, beams.k, dim=1)  # [n, k]
    parent = beams.rows_of[units].gather(1, idx // vocab)  # [n, k]
    token = idx % vocab  # [n, k]
    hit, reason = _ends(state, beams, parent, token)
    kept_score, keep = torch.topk(cand + hit.to(torch.float32) * _NEG, width, dim=1)  # [n, width]
    return Selection(cand, parent, token, raw_logp[parent, token], hit, reason, keep, kept_score)


def _ends(state: DecodeState, beams: Beams, parent: torch.Tensor, token: torch.Tensor):
    """Which candidates end their sequence ([n, k] bool) and why ([n, k] long, REASONS codes)."""
    eos = torch.isin(token, beams.eos)  # [n, k]
    hit = eos | (state.n_new[parent] + 1 >= state.limit[parent])  # [n, k]: EOS or the length limit
    reason = eos.long()  # REASONS: 0 "length", 1 "eos"
    stop = _stop_strings(state, parent, token, eos)  # [n, k] or None
    if stop is not None:
        hit = hit | stop
        reason = torch.where(stop, REASONS.index("stop_string"), reason)
    return hit, reason


def _stop_strings(state: DecodeState, parent: torch.Tensor, token: torch.Tensor, eos: torch.Tensor):
    """[n, k] bool: the candidate's text contains a stop string (checked on the host); None if
    there are no stop strings."""
    stops = tuple(getattr(getattr(state, "stopping", None), "stop_strings", ()) or ())
    if not stops:
        return None
    hits = torch.zeros_like(eos)
    prefix: dict[int, list[int]] = {}
    flat = hits.view(-1)
    for i, (r, t, e) in enumerate(zip(parent.flatten().tolist(), token.flatten().tolist(),
                                      eos.flatten().tolist())):
        if not e:
            toks = prefix.setdefault(r, state.tokens_of(r))
            flat[i] = any(s in state.lm.decode(toks + [t]) for s in stops)
    return hits


def commit(state: DecodeState, beams: Beams, sel: Selection) -> StepOutput:
    """Finish hypotheses, apply early stopping, reorder rows; ``sel`` covers every unit."""
    closed = beams.closed  # [units] before this step
    # every live row holds state.steps generated tokens
    denominator = float(state.steps + 1) ** beams.settings.length_penalty
    ending = eligible(beams, sel, closed)  # [units, k]
    if bool(ending.any()):
        offer(state, beams, sel, ending, denominator)
    parent, token = close(beams, sel, closed, denominator)
    dest, index = assign_rows(beams.rows_of, parent)  # [units, width], [rows]
    if bool((index != torch.arange(index.shape[0], device=index.device)).any()):  # some row changes:
        state.select_rows(index)  # move those rows (ids, masks, KV cache ...)
    beams.rows_of = dest
    _mark_done(state, beams, changed=bool((beams.closed != closed).any()))
    return output(state, beams, sel, token)


def eligible(beams: Beams, sel: Selection, closed: torch.Tensor) -> torch.Tensor:
    """[units, k] bool: candidates that end and rank among the first ``width``, of open units."""
    rank_ok = torch.arange(sel.hit.shape[1], device=sel.hit.device) < beams.width  # [k]
    return sel.hit & rank_ok & ~closed[:, None]


def offer(state: DecodeState, beams: Beams, sel: Selection, eligible: torch.Tensor,
          denominator: float | torch.Tensor) -> None:
    """Offer the ``eligible [units, k]`` candidates to the finished hypotheses."""
    ids, logprobs, length = _sequences(state, beams, sel.parent, sel.token, sel.logprob)
    beams.hyps.add(ids, logprobs, length, sel.score, eligible, sel.reason, denominator)


def close(beams: Beams, sel: Selection, closed: torch.Tensor,
          denominator: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply transformers' early-stopping rules (``beams.closed``) and keep the running scores;
    returns each beam's parent row and token ([units, width] long each; closed units: their own
    rows and padding). ``closed [units]``: the units closed before this step."""
    s = beams.settings
    best = sel.kept_score[:, 0] if s.flavour == "v5" else sel.score[:, 0]  # [units]
    use_max = s.early_stopping == "never" and s.length_penalty > 0.0
    beams.hyps.update_open(best, beams.never_denominator if use_max else denominator)
    full_stop = beams.hyps.full & (s.early_stopping is True)  # [units]
    beams.closed = closed | ~beams.hyps.open | full_stop | sel.hit.all(1)
    # a unit closed by now keeps its rows where they are (they are done): the rows of a unit that
    # closes at this step stay the parents of its last hypotheses, so their traces stay with them
    parent = torch.where(beams.closed[:, None], beams.rows_of, sel.kept("parent"))  # [units, width]
    token = torch.where(beams.closed[:, None], beams.pad, sel.kept("token"))  # [units, width]
    beams.score = torch.where(closed[:, None], beams.score, sel.kept_score)
    return parent, token


def output(state: DecodeState, beams: Beams, sel: Selection, token: torch.Tensor) -> StepOutput:
    """The step's token of every row (``token [units, width]``, beams in logical order, already
    placed in ``beams.rows_of``); rows of closed units gain none."""
    flat_dest = beams.rows_of.flatten()  # [rows]
    tokens = torch.zeros_like(flat_dest).scatter(0, flat_dest, token.flatten())  # [rows]
    logprobs = torch.zeros(state.rows, device=flat_dest.device).scatter(0, flat_dest, sel.kept("logprob").flatten())
    count = (~state.done).long()  # [rows]
    return StepOutput(tokens[:, None], count, logprobs[:, None], state.next_logits[:, None])


def _mark_done(state: DecodeState, beams: Beams, changed: bool) -> None:
    done = beams.closed[beams.unit_of_row]  # [rows]
    if changed:
        for r in torch.nonzero(done & ~state.done).flatten().tolist():
            state.finish[r] = "beam_done"
    state.done = done


def _sequences(state: DecodeState, beams: Beams, parent: torch.Tensor, token: torch.Tensor,
               logprob: torch.Tensor):
    """Generated tokens [n, k, max_new], their log-probs and lengths [n, k] of candidates."""
    col = state.n_new[parent][..., None]  # [n, k, 1]
    if beams.settings.flavour == "v4":  # transformers <= 4.56 writes the first EOS id at the end
        token = torch.where(torch.isin(token, beams.eos), beams.eos[0], token)
    ids = state.ids[:, state.prompt_width:][parent].scatter(2, col, token[..., None])  # [n, k, max_new]
    logprobs = state.logprobs[parent].scatter(2, col, logprob[..., None])  # [n, k, max_new]
    return ids, logprobs, col[..., 0] + 1


def assign_rows(rows_of: torch.Tensor, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical rows of the new beams, computed on the device (no host read: a captured step may call it).

    Args:
        rows_of: ``[units, width]`` long, each unit's rows (beams in logical order).
        parent: ``[units, width]`` long, the row each new beam extends (one of its unit's rows).

    Returns:
        ``dest [units, width]``: the row of each new beam (the first beam extending a row stays in
        it, the others take the unit's rows that no beam extends, in ``rows_of`` order), and
        ``index [rows]``: new row ``i`` = old row ``index[i]`` (identity where nothing moves).

    Example:
        >>> dest, index = assign_rows(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, 0]]))
        >>> dest.tolist(), index.tolist()
        ([[1, 2, 0]], [0, 1, 1])
    """
    units, width = parent.shape
    dev = parent.device
    same = parent[:, :, None] == parent[:, None, :]  # [units, width, width]: beams j, i extend one row
    before = torch.ones(width, width, dtype=torch.bool, device=dev).tril(-1)  # [width, width]: i < j
    first = ~(same & before).any(2)  # [units, width]: beam j is the first to extend its row
    free = ~(rows_of[:, :, None] == parent[:, None, :]).any(2)  # [units, width]: no beam extends the row
    free_rank = free.long().cumsum(1) - 1  # [units, width]: place of each free row among them
    later_rank = (~first).long().cumsum(1) - 1  # [units, width]: place of each later beam among them
    match = free[:, None, :] & (free_rank[:, None, :] == later_rank[:, :, None])  # [units, j, i]
    taken = (match.long() * rows_of[:, None, :]).sum(2)  # [units, width]: the free row beam j takes
    dest = torch.where(first, parent, taken)  # [units, width]
    index = torch.arange(units * width, device=dev).scatter(0, dest.flatten(), parent.flatten())  # [rows]
    return dest, index


# ------------------------------------------------------------------------- stops from the loop
def retire(state: DecodeState, beams: Beams) -> None:
    """Beams the loop stopped (stopping criteria, monitors) become finished hypotheses."""
    external = state.done & ~beams.closed[beams.unit_of_row]  # [rows]
    if not bool(external.any()):
        return
    rows = beams.rows_of  # [units, width]
    mask = external[rows] & ~beams.closed[:, None]  # [units, width]
    reason = torch.tensor([[reason_code(state.finish[r]) for r in u] for u in rows.tolist()],
                          device=rows.device)  # [units, width]
    ids = state.ids[:, state.prompt_width:][rows]  # [units, width, max_new]
    length = max(state.steps, 1)
    beams.hyps.add(ids, state.logprobs[rows], state.n_new[rows], beams.score, mask, reason,
                   float(length) ** beams.settings.length_penalty)
    beams.score = beams.score.masked_fill(mask, -float("inf"))
    beams.closed = beams.closed | mask.all(1)


# ---------------------------------------------------------------------------------- the result
def finalize(state: DecodeState, beams: Beams) -> list[list[Candidate]]:
    """Per prompt, its best ``num_return_sequences`` hypotheses over all its units, best first."""
    retire(state, beams)
    h = beams.hyps
    empty = ~h.finished.any(1)  # [units]: nothing finished (the loop ended otherwise): keep running
    if bool(empty.any()):
        rows = beams.rows_of
        h.add(state.ids[:, state.prompt_width:][rows], state.logprobs[rows], state.n_new[rows],
              beams.score, empty[:, None].expand_as(rows), torch.zeros_like(rows),
              float(max(state.steps, 1)) ** beams.settings.length_penalty)
    groups, width = beams.settings.groups, beams.width
    native = h.score.tolist()  # ranking in the scores' own precision (float64 in flavour v4)
    scores = h.score.float().tolist()  # the returned scores are float32, as in transformers
    finished, length, reason = h.finished.tolist(), h.length.tolist(), h.reason.tolist()
    ids, logprobs = h.ids.tolist(), h.logprobs.tolist()
    out: list[list[Candidate]] = []
    for p in range(beams.units // groups):
        slots = [(u, j) for u in range(p * groups, (p + 1) * groups) for j in range(width) if finished[u][j]]
        slots.sort(key=lambda uj: -native[uj[0]][uj[1]])  # stable: group order, then rank
        cands = []
        for u, j in slots[: beams.settings.num_return_sequences]:
            toks = ids[u][j][: length[u][j]]
            cands.append(Candidate(state.lm.decode(toks), toks, logprobs[u][j][: length[u][j]],
                                   scores[u][j], REASONS[reason[u][j]]))
        out.append(cands)
    return out
