# SPDX-License-Identifier: Apache-2.0
"""What a provider module supplies to the call lifecycle: an adapter that knows request and
response *shapes* (never content), the kinds of call it serves, and how a call is routed to one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .invocation import Invocation
    from .streams import AsyncStreamProxy, StreamProxy

__all__ = ["OUTPUT_TEXT_SAMPLE_CHUNKS", "CallSpec", "ProviderAdapter", "RequestInfo", "Router", "fixed_route"]

#: When a stream's usage is expected in its last chunk, an adapter may stop reading chunk text
#: after this many chunks (reading it is most of the per-chunk cost); should usage then never
#: arrive (an abandoned stream), the output estimate scales this sample by the chunk count.
OUTPUT_TEXT_SAMPLE_CHUNKS = 8

@dataclass(slots=True)
class RequestInfo:
    """What an adapter reads from a request before it is sent (never content)."""

    provider: str
    request_model: str | None
    stream: bool = False
    server_address: str | None = None
    server_port: int | None = None
    user: str | None = None
    max_output_tokens: int | None = None
    params: dict[str, Any] | None = None  # temperature, top_p, enable_thinking, ...
    span_attributes: dict[str, Any] | None = None


class ProviderAdapter(Protocol):
    """Shape knowledge for one SDK surface. All methods may raise; callers guard them."""

    #: (sync, async) stream proxy classes: ``streams.STREAM_PROXIES`` or subclasses of them.
    stream_proxies: tuple[type[StreamProxy], type[AsyncStreamProxy]]

    def request_info(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RequestInfo: ...

    def prepare(self, inv: Invocation, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments to send: may ask for stream usage, and applies a budget downgrade
        (``inv.record.request_model`` then differs from what the caller asked for)."""
        ...

    def input_text_size(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int]:
        """(latin chars, CJK chars) of the request's input, only for estimating missing usage."""
        ...

    def attach_stream(self, inv: Invocation, result: Any, wrap: Callable[[Invocation, Any], Any]) -> Any | None:
        """For SDK stream objects whose helpers read an inner stream: put ``wrap(inv, inner)`` inside
        and return the object; ``None`` when the result is not such an object."""
        ...

    def is_stream(self, inv: Invocation, result: Any) -> bool: ...

    def read_response(self, inv: Invocation, result: Any) -> None:
        """Fill usage/model/id/finish reasons; call ``inv.mark_error`` for a *returned* error."""
        ...

    def on_chunk(self, inv: Invocation, chunk: Any) -> bool:
        """Update state from one streamed chunk; return False to hide it from the caller."""
        ...


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One kind of call: which adapter reads it and what operation it is."""

    adapter: ProviderAdapter
    operation: str


#: Picks the spec for one intercepted SDK call, or ``None`` for a call that is not an LLM
#: request (a client-level patch sees every HTTP request the client makes).
Router = Callable[[Any, tuple[Any, ...], dict[str, Any]], "CallSpec | None"]


def fixed_route(spec: CallSpec) -> Router:
    """The router of a method that is always the same kind of LLM call."""
    def route(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallSpec:
        return spec

    return route
