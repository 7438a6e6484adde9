"""specdraft: lossless speculative decoding for LLM inference."""

from .api import LLM, GenerationResult
from .errors import SpecdraftError
from .runtime.sampling import SamplingParams

__all__ = ["LLM", "GenerationResult", "SamplingParams", "SpecdraftError"]
__version__ = "0.1.0"
