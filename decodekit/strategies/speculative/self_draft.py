"""Self-speculative decoding: the draft is the target's own first layers plus its final norm and head.

A draft exists for any model, with no second checkpoint and no extra weights: the early-exit
model shares every parameter with the target (no copy) and runs ``draft_layers`` of its decoder
layers. This is the training-free early-exit draft of self-speculative decoding (Zhang et al.,
"Draft & Verify", ACL 2024, arXiv:2309.08168, which skips layers; Elhoushi et al., "LayerSkip",
ACL 2024, arXiv:2404.16710, which exits early as here). Verification is the shared lossless one,
so the output equals greedy (or the target's distribution when sampling) whatever the draft says;
only the acceptance rate depends on how many layers the draft keeps.

Example:
    >>> decodekit.generate(lm, "Hello", "self_speculative", draft_layers=8)   # doctest: +SKIP
"""

from __future__ import annotations

import copy

import torch

from decodekit.lm import LM
from decodekit.registry import register_strategy
from decodekit.state import DecodeState
from decodekit.strategies.speculative.config import SelfSpeculativeConfig
from decodekit.strategies.speculative.draft_model import DraftModelProposer
from decodekit.strategies.speculative.strategy import DraftVerify

__all__ = ["SelfSpeculative", "early_exit_lm", "find_layers"]


def find_layers(model: torch.nn.Module) -> list[str]:
    """Attribute path to the decoder-layer list (the ModuleList of ``num_hidden_layers`` blocks),
    e.g. ``["model", "layers"]`` for Llama, ``["transformer", "h"]`` for GPT-2."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name:
            return name.split(".")
    raise ValueError(f"self_speculative: no list of {n} decoder layers found in {type(model).__name__}")


def early_exit_lm(lm: LM, layers: int) -> LM:
    """An LM running only the first ``layers`` decoder layers of ``lm`` and then its norm and head.

    Parameters are shared (not copied); only the module objects along the path to the layer list
    and the config are shallow-copied.

    >>> from tests.toy import tiny_lm                       # doctest: +SKIP
    >>> early_exit_lm(tiny_lm(layers=4), 1).config.num_hidden_layers   # doctest: +SKIP
    1
    """
    total = lm.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"self_speculative: draft_layers must be in [1, {total}], got {layers}")
    path = find_layers(lm.model)
    config = copy.copy(lm.config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    root = _shallow(lm.model, config)
    parent = root
    for name in path[:-1]:
        child = _shallow(getattr(parent, name), config)
        parent._modules[name] = child
        parent = child
    parent._modules[path[-1]] = torch.nn.ModuleList(list(getattr(parent, path[-1])[:layers]))
    return LM(root, lm.tokenizer)


def _shallow(module: torch.nn.Module, config) -> torch.nn.Module:
    """A shallow copy of ``module`` with its own child dict (children shared) and ``config``."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    if hasattr(new, "config"):
        new.config = config
    return new


@register_strategy("self_speculative")
class SelfSpeculative(DraftVerify):
    """Speculative decoding with an early-exit draft made of the target's first layers and head.

    Example:
        >>> decodekit.generate(lm, prompt, "self_speculative", draft_layers=10)  # doctest: +SKIP
    """

    Config = SelfSpeculativeConfig

    def __init__(self, config: SelfSpeculativeConfig | None = None, **options):
        super().__init__(config, **options)
        self._drafts: dict[int, LM] = {}  # id(target model) -> its early-exit LM (weights shared)

    def make_proposer(self, state: DecodeState) -> DraftModelProposer:
        lm = state.lm
        layers = self.config.draft_layers or max(1, lm.config.num_hidden_layers // 4)
        key = id(lm.model)
        if key not in self._drafts or self._drafts[key].config.num_hidden_layers != layers:
            self._drafts[key] = early_exit_lm(lm, layers)
        return DraftModelProposer(self._drafts[key])
