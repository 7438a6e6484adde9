"""OpenAI request shapes (the subset served). Unknown fields are ignored, as OpenAI clients send
extras; known fields are type-checked strictly so a wrong type is a 400, not a silent coercion."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

from ..runtime.sampling import SamplingParams


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Base):
    type: Literal["text"]
    text: str


class ChatMessage(_Base):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(_Base):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's; llama-server and vLLM take it too
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    n: int = 1
    stream_options: dict | None = None

    def sampling_params(self) -> SamplingParams:
        """The request's sampling (OpenAI's default temperature is 1); a SpecdraftError if invalid."""
        return SamplingParams(temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, seed=self.seed)

    def token_limit(self) -> int | None:
        return self.max_tokens


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int]]
