# SPDX-License-Identifier: Apache-2.0
"""What a call's answer has shown so far, for the usage record: one buffer per call.

Adapters and the stream proxy reach it only through these methods. It decides two things at the
end of a call: whether the provider's usage arrived (else the answer's text backs an estimate) and
whether the stream was left before its end. Only the text a stream showed is counted, never kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..usage import TokenUsage, count_text, estimate_tokens
from .contract import OUTPUT_TEXT_SAMPLE_CHUNKS

__all__ = ["OutputBuffer"]


class OutputBuffer:
    __slots__ = (
        "_cjk",
        "_deferred_text",
        "_latin",
        "accepted",
        "chunks",
        "first_chunk_at",
        "model_usages",
        "usage_expected",
        "usage_injected",
        "usage_seen",
    )

    def __init__(self) -> None:
        self.usage_seen = False  # the provider reported usage (latest report wins)
        self.usage_expected = False  # the provider will report usage at the end of the stream
        self.usage_injected = False  # ... because we asked for it: the caller never sees that chunk
        self.chunks = 0  # chunks with answer text
        self.first_chunk_at: float | None = None
        # The provider took the request and began answering (a raised error after this still
        # billed the input); an error frame undoes it (``refuse``).
        self.accepted = False
        self.model_usages: list[tuple[str, TokenUsage]] = []
        self._latin = self._cjk = 0
        self._deferred_text: Callable[[], str] | None = None

    # -- what the stream shows -------------------------------------------------------------
    def first_chunk(self) -> None:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
            self.accepted = True

    def expect_usage(self, *, injected: bool) -> None:
        self.usage_expected = True
        self.usage_injected = injected or self.usage_injected

    def text_chunk_past_sample(self) -> bool:
        """Count a chunk with answer text; ``True`` once usage is expected and the text sample is
        complete, so the adapter may skip reading the text (it is most of the per-chunk cost)."""
        self.chunks += 1
        return self.usage_expected and self.chunks > OUTPUT_TEXT_SAMPLE_CHUNKS

    def hides(self, has_usage: bool) -> bool:
        """A usage-only chunk that exists because we asked for it: not for the caller."""
        return self.usage_injected and has_usage

    def add_text(self, text: str | None) -> None:
        """Count streamed text for the estimate used only if no usage arrives (per chunk: keep it cheap)."""
        if text:
            if text.isascii():
                self._latin += len(text)
            else:
                latin, cjk = count_text(text)
                self._latin += latin
                self._cjk += cjk

    def set_text(self, text: str | None) -> None:
        """For providers that resend the full text in every chunk (non-incremental)."""
        self._deferred_text = None
        self._latin = self._cjk = 0
        self.add_text(text)

    def defer_text(self, read: Callable[[], str]) -> None:
        """Like :meth:`set_text` for a cumulative stream, read only if an estimate is needed:
        counting the whole text so far on every chunk made long streams quadratic."""
        self._deferred_text = read

    def refuse(self) -> None:
        self.accepted = False

    def usage_split(self, usages: Sequence[tuple[str, TokenUsage | None]]) -> TokenUsage | None:
        """Keep usage split by model; the sum, or ``None`` when no entry names a model and a count."""
        usable = [(model, tokens) for model, tokens in usages if model and tokens is not None]
        if not usable:
            return None
        self.model_usages = usable
        return TokenUsage(
            input_tokens=sum(t.input_tokens for _, t in usable),
            output_tokens=sum(t.output_tokens for _, t in usable),
            cached_input_tokens=sum(t.cached_input_tokens for _, t in usable),
            cache_write_tokens=sum(t.cache_write_tokens for _, t in usable),
            reasoning_tokens=sum(t.reasoning_tokens for _, t in usable),
        )

    # -- at the end of the call ----------------------------------------------------------------
    def read_deferred_text(self) -> None:
        """Count the text a cumulative stream deferred (may raise: the adapter's reader)."""
        read, self._deferred_text = self._deferred_text, None
        if read is not None:
            self.set_text(read())

    @property
    def produced(self) -> bool:
        return self._latin + self._cjk > 0

    def estimated_output_tokens(self) -> int:
        """The answer's tokens by the documented heuristic; a stream whose text was sampled scales
        the sample by its chunk count."""
        latin, cjk = self._latin, self._cjk
        if self.usage_expected and self.chunks > OUTPUT_TEXT_SAMPLE_CHUNKS:
            scale = self.chunks / OUTPUT_TEXT_SAMPLE_CHUNKS
            latin, cjk = round(latin * scale), round(cjk * scale)
        return estimate_tokens(latin, cjk)

    def forget_text(self) -> None:
        self._deferred_text = None
