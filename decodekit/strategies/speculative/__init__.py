"""Draft-then-verify decoding: one proposer interface, one shared lossless verification.

Strategies (registered names):

* ``prompt_lookup``: n-gram drafts from the prompt and the generated text (no configuration needed);
* ``speculative``: a draft LM with the target's tokenizer (Leviathan et al. 2023, Chen et al. 2023);
* ``self_speculative``: an early-exit draft made of the target's first layers and head;
* ``blockwise``: prediction heads on the last hidden state (Stern et al. 2018), trained with
  ``decodekit train-heads`` (:func:`train_heads`).

All verify with greedy verification (output == greedy) or, with ``do_sample=True``, lossless
speculative sampling (output distribution == the target's), in batches where rows accept different
numbers of drafts (BASS). New proposers subclass :class:`DraftVerify` and return a
:class:`~decodekit.strategies.speculative.proposer.Proposer` from ``make_proposer``.

Token trees (:mod:`.tree`, :mod:`.trie`): ``prompt_lookup`` with ``num_candidates > 1`` and
``blockwise`` with ``tree_top_k > 1`` (:mod:`.heads_tree`) verify several continuations at once
through a tree attention mask (SpecInfer / Medusa style), where the model takes a 4-D mask;
elsewhere they verify their best candidate as a chain. Still lossless.

Example:
    >>> import decodekit
    >>> lm = decodekit.load()                                                        # doctest: +SKIP
    >>> gen = decodekit.generate(lm, "Summarise: ...", strategy="prompt_lookup")     # doctest: +SKIP
    >>> gen.stats.extra["acceptance_rate"], gen.stats.extra["target_forwards_per_token"]  # doctest: +SKIP
    >>> gen = decodekit.generate(lm, "Summarise: ...", "prompt_lookup", num_candidates=4)  # doctest: +SKIP
    >>> gen.stats.extra["tree_verifies"], gen.stats.extra["accepted_per_verify"]     # doctest: +SKIP
"""

from decodekit.strategies.speculative.blockwise import Blockwise, BlockwiseConfig, stern_verify
from decodekit.strategies.speculative.config import (
    DraftVerifyConfig, PromptLookupConfig, SelfSpeculativeConfig, SpeculativeConfig,
)
from decodekit.strategies.speculative.heads import BlockwiseHeads, load_heads, save_heads
from decodekit.strategies.speculative.draft_model import DraftModelProposer, Speculative
from decodekit.strategies.speculative.prompt_lookup import PromptLookup, PromptLookupProposer
from decodekit.strategies.speculative.proposer import Draft, DraftContext, Proposer
from decodekit.strategies.speculative.self_draft import SelfSpeculative, early_exit_lm
from decodekit.strategies.speculative.strategy import DraftVerify
from decodekit.strategies.speculative.train_heads import acceptance, train_heads
from decodekit.strategies.speculative.tree import TreeShape, tree_shape, tree_verify
from decodekit.strategies.speculative.trie import merge_candidates
from decodekit.strategies.speculative.verify import Verified, greedy_verify, sample_verify

__all__ = [
    "Blockwise", "BlockwiseConfig", "BlockwiseHeads", "acceptance", "load_heads", "save_heads",
    "stern_verify", "train_heads",
    "Draft", "DraftContext", "DraftModelProposer", "DraftVerify", "DraftVerifyConfig", "PromptLookup",
    "PromptLookupConfig", "PromptLookupProposer", "Proposer", "SelfSpeculative", "SelfSpeculativeConfig",
    "Speculative", "SpeculativeConfig", "Verified", "early_exit_lm", "greedy_verify", "sample_verify",
    "TreeShape", "merge_candidates", "tree_shape", "tree_verify",
]
