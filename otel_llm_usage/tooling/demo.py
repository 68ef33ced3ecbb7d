# SPDX-License-Identifier: Apache-2.0
"""The offline demo: an instrumented app → loopback LLM server → /metrics and a cost table.

Nothing leaves the machine: the loopback server answers with deterministic
filler text and usage, so the figures printed are reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from ..attribution import track, usage_context
from ..config import Config
from ..ledger.totals import breakdown
from ..pricing import PricingSettings
from ..usage import UsageRecord

__all__ = ["run_demo"]

FUNCTIONS = ("live-reply", "gift-thanks", "room-summary")
USERS = ("viewer-1", "viewer-2", "viewer-3", "viewer-4")
ANCHORS = ("anchor-lin", "anchor-zhao")


def demo_config(budget_cny: float = 0.02, ledger: str = "memory://") -> Config:
    return Config.model_validate({
        "ledger": ledger,
        "provider_hosts": {"127.0.0.1": "openai"},
        "pricing": PricingSettings(currency="CNY", exchange_rates={"USD": Decimal("7.1")}),
        "budgets": [
            {"name": "demo-daily-total", "window": "day", "timezone": "Asia/Shanghai",
             "limit": {"cost": budget_cny}, "action": "alert"},
            {"name": "demo-per-anchor", "per": "anchor", "window": "day", "limit": {"tokens": 400},
             "action": "alert"},
        ],
    })


def _traffic(base_url: str, compat_url: str, dashscope_url: str | None, calls: int) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-demo", max_retries=0)
    compat = openai.OpenAI(base_url=compat_url, api_key="sk-demo", max_retries=0)

    @track(function="live-reply")
    def live_reply(i: int) -> None:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hello " * (i % 7 + 1)}])

    @track(function="gift-thanks")
    def gift_thanks(i: int) -> None:
        for _ in client.chat.completions.create(model="gpt-4.1-mini", stream=True,
                                               messages=[{"role": "user", "content": "thanks for the gift"}]):
            pass

    @track(function="room-summary")
    def room_summary(i: int) -> None:
        client.responses.create(model="gpt-4o", input="summarize the room chat " * 3)
        client.embeddings.create(model="text-embedding-3-small", input=["room topic", "viewer question"])
        compat.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "总结 直播间 内容"}])

    for i in range(calls):
        with usage_context(user=USERS[i % len(USERS)], anchor=ANCHORS[i % len(ANCHORS)], session=f"room-{i % 3}"):
            (live_reply, gift_thanks, room_summary)[i % 3](i)
    # A rate-limited call is recorded as an error; the demo app carries on.
    with usage_context(user="viewer-1", anchor="anchor-lin", function="live-reply"), \
            contextlib.suppress(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"X-Loopback-Scenario": "status=429"})

    async def concurrent() -> None:
        aclient = openai.AsyncOpenAI(base_url=base_url, api_key="sk-demo", max_retries=0)
        with usage_context(function="live-reply", anchor="anchor-zhao", user="viewer-2"):
            await asyncio.gather(*(aclient.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "async hello"}]) for _ in range(5)))
        await aclient.close()

    asyncio.run(concurrent())
    if dashscope_url is not None:
        _dashscope_traffic(dashscope_url)


def _dashscope_traffic(dashscope_url: str) -> None:
    import dashscope as _dashscope

    dashscope: Any = _dashscope  # the SDK's stubs are stricter than the dict messages it accepts
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = dashscope_url
    try:
        with usage_context(function="live-reply", anchor="anchor-lin", user="viewer-3"):
            dashscope.Generation.call(model="qwen-turbo", api_key="sk-demo",
                                      messages=[{"role": "user", "content": "你好 主播"}], result_format="message")
            for _ in dashscope.Generation.call(model="qwen-plus", api_key="sk-demo", stream=True,
                                               incremental_output=True,
                                               messages=[{"role": "user", "content": "讲个 笑话"}]):
                pass
        with usage_context(function="room-summary", anchor="anchor-zhao", user="viewer-4"):
            client = dashscope.Client(api_key="sk-demo", base_url=dashscope_url, max_retries=0)
            client.chat.completions.create(model="qwen-max", messages=[{"role": "user", "content": "直播 总结"}])
    finally:
        dashscope.base_http_api_url = saved


def _money(value: Decimal) -> str:
    return f"{value:.6f}"


def _summary(records: list[UsageRecord], convert: Callable[[Decimal, str, str], Decimal], console: Console) -> None:
    def into(currency: str) -> Callable[[Decimal, str], Decimal | None]:
        def conv(amount: Decimal, from_ccy: str) -> Decimal | None:
            try:
                return convert(amount, from_ccy, currency)
            except ValueError:
                return None
        return conv

    for key in ("model", "function", "user", "anchor"):
        usd = dict(breakdown(records, key, into("USD")))
        table = Table(title=f"Cost by {key}", title_justify="left")
        for col in (key, "calls", "errors", "input tok", "output tok", "cost CNY", "cost USD"):
            table.add_column(col, justify="left" if col == key else "right", no_wrap=True)
        for name, t in breakdown(records, key, into("CNY")):
            table.add_row(name, str(t.requests), str(t.errors + t.blocked), str(t.input_tokens), str(t.output_tokens),
                          _money(t.cost), _money(usd[name].cost) + (" *" if t.unpriced_requests else ""))
        console.print(table)


def _budget_table(status: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="Budgets", title_justify="left")
    for col in ("budget", "scope", "window", "used", "limit", "unit", "utilization", "state"):
        table.add_column(col)
    for b in status:
        used = f"{b['used']:.6f}" if b["unit"] != "tokens" else str(b["used"])
        table.add_row(str(b["budget"]), str(b["scope"]), str(b["window"]), used, str(b["limit"]),
                      str(b["unit"]), f"{float(b['utilization']):.0%}", str(b["state"]))
    console.print(table)


def run_demo(port: int = 9464, calls: int = 24, serve: bool = False, console: Console | None = None,
             host: str = "127.0.0.1", ledger: str = "memory://") -> int:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from .. import get_budget_status
    from .._ports import free_port, port_is_free
    from ..instrumentor import LLMUsageInstrumentor
    from ..runtime.bootstrap import start_prometheus_endpoint
    from ..testing import LoopbackLLMServer
    from ..testing.server import wait_for_interrupt

    # Piped output gets a width that fits the tables rather than rich's 80-column default.
    console = console or Console(width=None if Console().is_terminal else 110)
    if not port_is_free(host, port):
        new_port = free_port()
        console.print(f"[yellow]port {port} is busy; serving metrics on {new_port} instead[/]")
        port = new_port
    server = LoopbackLLMServer()
    server.start()
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader],
                                   resource=Resource.create({"service.name": "otel-llm-usage-demo"}))
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    start_prometheus_endpoint(host, port)
    instrumentor = LLMUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            config=demo_config(ledger=ledger))
    runtime = instrumentor.runtime
    assert runtime is not None
    try:
        has_dashscope = importlib.util.find_spec("dashscope") is not None
        started = time.perf_counter()
        _traffic(server.openai_base_url, server.url + "/compatible-mode/v1",
                 server.dashscope_base_url if has_dashscope else None, calls)
        elapsed = time.perf_counter() - started
        records = runtime.records()
        console.print(f"[bold]otel-llm-usage demo[/]: {len(records)} LLM calls against the loopback server "
                      f"{server.url} in {elapsed:.2f}s, {len(spans.get_finished_spans())} spans"
                      + ("" if has_dashscope else " (install the [dashscope] extra for the DashScope calls)"))
        _summary(records, runtime.pricer.stage.convert, console)
        status = get_budget_status()
        if status:
            _budget_table(status, console)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        lines = [ln for ln in body.splitlines() if ln.startswith(("llm_usage_requests_total", "llm_budget_"))]
        # The endpoint lives only as long as this process: say so rather than print a dead link.
        where = f"served at {metrics_url}" if serve else \
            f"scraped from {metrics_url} (gone when the demo exits; `--serve` keeps it up)"
        console.print(f"[bold]Prometheus metrics[/] {where}, {len(body.splitlines())} lines, e.g.:")
        for line in lines[:6]:
            console.print("  " + line, markup=False, highlight=False, soft_wrap=True)
        if not ledger.startswith("memory://"):
            console.print(f"Records written to {ledger}: try `otel-llm-usage report --ledger {ledger}`.")
        if any(r.cost is None for r in records):
            console.print("Costs marked * include calls to models without a known price (never counted as free).")
        if serve:
            console.print(f"Serving {metrics_url} until Ctrl-C …")
            wait_for_interrupt()
    finally:
        instrumentor.uninstrument()
        meter_provider.shutdown()
        server.stop()
    return 0
