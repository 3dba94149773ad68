"""Training blockwise heads by self-distillation (Stern et al. 2018 §5 "sequence-level distillation";
Medusa-1's recipe, Cai et al. 2024, arXiv:2401.10774: frozen base, heads trained on its own outputs).

1. Data: the model greedily continues a prompt set; the texts it produces (prompt + continuation)
   are what the heads must predict at decode time.
2. One frozen forward per sequence gives the last hidden state ``h_t`` and the model's own
   prediction ``y_t = argmax p(. | x_<=t)`` at every position. Head i at position t learns
   ``y_{t+i}`` — exactly what greedy (exact) verification will compare its proposal with —
   teacher-forced with the embedding of the token ``x_{t+i}`` before it when the heads are
   sequential (in the greedy part of a sequence ``x_{t+i} = y_{t+i-1}``).
3. Only the heads' residual blocks train (AdamW); the LM head stays frozen. The softmax runs over the
   tokens that occur as labels or in the model's top 8 at some position (``vocab="data"``, the
   default: ~50x cheaper than the 49k-token softmax on CPU); ``vocab="full"`` uses the whole vocabulary.

Example:
    >>> heads = train_heads(lm, prompts, num_heads=3, steps=300)               # doctest: +SKIP
    >>> save_heads(heads, "heads.safetensors")                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import decodekit
from decodekit.strategies.speculative.heads import BlockwiseHeads

__all__ = ["HeadData", "distillation_data", "train_heads", "acceptance"]


@dataclass(frozen=True)
class HeadData:
    """Training positions for the heads."""

    ids: torch.Tensor  # [N, L] long: the sequences (prompt + greedy continuation), right-padded
    hidden: torch.Tensor  # [N, L, H] float32: the model's last hidden state
    labels: torch.Tensor  # [N, L] long: the model's argmax next token at each position
    valid: torch.Tensor  # [N, L] bool: real positions
    vocab: torch.Tensor  # [C] long: token ids the softmax runs over


def distillation_data(lm, prompts: Sequence, *, max_new_tokens: int = 64, batch_size: int = 8,
                      top: int = 8) -> HeadData:
    """Greedy continuations of ``prompts`` by ``lm`` itself, run once more to collect hidden states."""
    seqs: list[list[int]] = []
    lists = decodekit.api.encode_prompts(lm, list(prompts))
    for i in range(0, len(lists), batch_size):
        batch = lists[i: i + batch_size]
        gen = decodekit.generate(lm, batch, "greedy", max_new_tokens=max_new_tokens)
        seqs += [p + t for p, t in zip(batch, gen.token_ids)]
    L, H = max(map(len, seqs)), lm.config.hidden_size
    hidden = torch.zeros(len(seqs), L, H)
    labels = torch.zeros(len(seqs), L, dtype=torch.long)
    valid = torch.zeros(len(seqs), L, dtype=torch.bool)
    tokens = torch.zeros(len(seqs), L, dtype=torch.long)
    seen = []
    for r, seq in enumerate(seqs):
        tokens[r, : len(seq)] = torch.tensor(seq)
        ids = torch.tensor([seq], device=lm.device)  # [1, n]
        out = lm.forward(ids, lm.new_cache(), torch.ones_like(ids), hidden=True)
        hidden[r, : len(seq)] = out.hidden[0].float().cpu()
        labels[r, : len(seq)] = out.logits[0].argmax(-1).cpu()
        valid[r, : len(seq)] = True
        seen.append(out.logits[0].topk(top, -1).indices.flatten().cpu())
    vocab = torch.unique(torch.cat([labels[valid], *seen]))  # [C]
    return HeadData(tokens, hidden, labels, valid, vocab)


def train_heads(
    lm,
    prompts: Sequence | None = None,
    *,
    num_heads: int = 4,
    steps: int = 300,
    lr: float = 1e-3,
    batch_positions: int = 256,
    max_new_tokens: int = 64,
    vocab: str = "data",
    seed: int = 0,
    sequential: bool = True,
    data: HeadData | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> BlockwiseHeads:
    """Train ``num_heads`` blockwise heads for ``lm`` on its own greedy outputs for ``prompts``.

    ``progress(step, loss)`` is called after every step (the CLI draws a progress bar with it).
    Runs on ``lm``'s device: a few hundred steps take minutes on CPU, seconds on a GPU.
    """
    if vocab not in ("data", "full"):
        raise ValueError(f"vocab must be 'data' or 'full', got {vocab!r}")
    if steps < 1 or num_heads < 1:
        raise ValueError(f"steps and num_heads must be >= 1, got {steps}, {num_heads}")
    if data is None:
        if not prompts:
            raise ValueError("train_heads needs prompts (or data)")
        data = distillation_data(lm, prompts, max_new_tokens=max_new_tokens)
    device = lm.device
    torch.manual_seed(seed)
    heads = BlockwiseHeads(lm.config.hidden_size, num_heads, sequential=sequential).to(device)
    embed = lm.model.get_input_embeddings().weight.detach().float()  # [V, H] frozen
    weight = lm.model.get_output_embeddings().weight.detach().float()  # [V, H] frozen
    ids = data.vocab.to(device) if vocab == "data" else torch.arange(weight.shape[0], device=device)
    w = weight[ids].clone()  # [C, H]
    remap = torch.full((weight.shape[0],), -100, dtype=torch.long, device=device)  # token -> class
    remap[ids] = torch.arange(ids.numel(), device=device)
    rows, cols = torch.nonzero(data.valid, as_tuple=True)  # [P] every real position
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    heads.train()
    for step in range(steps):
        pick = torch.randint(0, rows.numel(), (batch_positions,), generator=g)  # [B]
        r, t = rows[pick], cols[pick]  # [B]
        h = data.hidden[r, t].to(device)  # [B, H]
        ahead = t[:, None] + torch.arange(1, num_heads + 1)[None, :]  # [B, n] positions t + i
        ok = (ahead < data.labels.shape[1]) & data.valid[r[:, None], ahead.clamp(max=data.labels.shape[1] - 1)]
        labels = data.labels[r[:, None], ahead.clamp(max=data.labels.shape[1] - 1)].to(device)  # [B, n]
        target = torch.where(ok.to(device), remap[labels], -100)  # [B, n], -100 = ignored
        before = data.ids[r[:, None], ahead.clamp(max=data.ids.shape[1] - 1)].to(device)  # [B, n] x_{t+i}
        logits = heads(h, embed[before] if sequential else None) @ w.T  # [B, n, C]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return heads.eval()


def acceptance(lm, heads: BlockwiseHeads, prompts: Sequence, *, max_new_tokens: int = 48,
               batch_size: int = 8) -> dict[str, float]:
    """Blockwise decoding stats (exact criterion) of ``heads`` on ``prompts``: mean accepted
    proposals per verify, acceptance rate, target forwards per token."""
    strategy = decodekit.strategies.get("blockwise")(heads=heads, draft_tokens=heads.num_heads)
    acc = prop = fw = tok = 0.0
    lists = decodekit.api.encode_prompts(lm, list(prompts))
    for i in range(0, len(lists), batch_size):
        gen = decodekit.generate(lm, lists[i: i + batch_size], strategy, max_new_tokens=max_new_tokens)
        e, n = gen.stats.extra, gen.stats.new_tokens
        acc += e["accepted_per_verify"] * n
        prop += e["acceptance_rate"] * n
        fw += e["target_forwards_per_token"] * n
        tok += n
    return {"accepted_per_verify": acc / tok, "acceptance_rate": prop / tok, "target_forwards_per_token": fw / tok}
