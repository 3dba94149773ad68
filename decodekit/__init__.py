"""decodekit: decoding strategies for any Hugging Face causal LM.

Example:
    >>> import decodekit
    >>> lm = decodekit.load()                       # embedded SmolLM2-135M-Instruct  # doctest: +SKIP
    >>> gen = decodekit.generate(lm, "Write a haiku about rain.", "sample",          # doctest: +SKIP
    ...                          max_new_tokens=40, seed=0, temperature=0.7, top_p=0.9)
    >>> print(gen.text, gen.stats.tokens_per_s)                                     # doctest: +SKIP
"""

from decodekit import strategies
from decodekit.api import generate
from decodekit.lm import LM, load
from decodekit.models import ModelNotFoundError, default_model_path
from decodekit.registry import MONITORS, STRATEGIES, register_monitor, register_strategy
from decodekit.state import Candidate, DecodeState, Generation, Stats, StepOutput

__version__ = "0.1.0"

__all__ = [
    "LM", "Candidate", "DecodeState", "Generation", "MONITORS", "ModelNotFoundError", "STRATEGIES",
    "Stats", "StepOutput", "default_model_path", "generate", "load", "register_monitor",
    "register_strategy", "strategies",
]
