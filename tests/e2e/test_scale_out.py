# SPDX-License-Identifier: Apache-2.0
"""Scale-out: OTLP push from short-lived processes, pre-fork workers, fork safety, one budget
held by four processes sharing a real ``redis-server``.

Every process here is a real subprocess (``tests/apps/scale_out_app.py``, gunicorn, the CI
example). Metrics are pushed to :class:`~tests.support.otlp_receiver.OtlpReceiver`, a stand-in for the
Collector's OTLP/HTTP receiver (no Collector binary is installable here). Each loopback call
costs 9 tokens and reserves 10 (see tests/budgets/test_budgets.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from otel_llm_usage._ports import free_port
from otel_llm_usage.budgets.engine import BudgetEngine
from otel_llm_usage.config import load_config
from otel_llm_usage.ledger import RecordQuery, open_ledger
from otel_llm_usage.runtime import bootstrap as _bootstrap
from otel_llm_usage.testing import LoopbackLLMServer
from tests.conftest import require_binary
from tests.support import redis_fixture
from tests.support.otlp_receiver import OtlpReceiver

redis_server = redis_fixture.redis_server
redis_url = redis_fixture.redis_url
redis_cluster = redis_fixture.redis_cluster
redis_cluster_url = redis_fixture.redis_cluster_url

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).parents[1] / "apps" / "scale_out_app.py"
CALL_TOKENS = 9
RESERVATION = 10
WAIT_S = 30.0


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (gunicorn worker slots 0 and 1)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def server() -> Iterator[LoopbackLLMServer]:
    """A loopback LLM server of this test's own, so its request count is this test's."""
    with LoopbackLLMServer() as s:
        yield s


class Procs:
    """Every process a test starts, each in a session of its own; teardown kills each such process
    group (the process and what it forked: gunicorn workers) and reaps the process."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test created (pgid == its pid)
            proc.communicate(timeout=WAIT_S)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.stop_all()


def base_env(server: LoopbackLLMServer, config: Path, receiver: OtlpReceiver | None = None,
             **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "LOOPBACK_OPENAI_URL": server.openai_base_url,
        "OTEL_LLM_USAGE_CONFIG": str(config),
        "OTEL_SERVICE_NAME": "scale-out-test",
        "OTEL_METRICS_EXPORTER": "otlp" if receiver is not None else "none",
    })
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    env.update(extra)
    return env


def write_config(path: Path, *, ledger: str, budgets: list[dict[str, Any]] | None = None) -> Path:
    path.write_text(yaml.safe_dump({
        "provider_hosts": {"127.0.0.1": "openai"},
        "pricing": {"currency": "USD"},
        "budgets": budgets or [],
        "ledger": ledger,
    }))
    return path


def last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'ledger.db'}"


def ledger_tokens(url: str) -> tuple[int, int]:
    """(ok records, total tokens) in a ledger."""
    store, counters = open_ledger(url)
    try:
        records = store.query(RecordQuery())
    finally:
        store.close()
        counters.close()
    return sum(r.status == "ok" for r in records), sum(r.tokens.total_tokens for r in records)


# --- short-lived processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_short_script_pushes_its_usage_at_exit(server, receiver, procs, tmp_path):
    """A few-second script never reaches the 60 s export interval: the SDK's atexit shutdown
    (final collection of the periodic reader) is what delivers its usage."""
    config = write_config(tmp_path / "cfg.yaml", ledger=sqlite_url(tmp_path))
    proc = procs.start([sys.executable, str(APP), "calls", "3"], base_env(server, config, receiver))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    (instance,) = receiver.instance_ids()
    assert receiver.cumulative_totals("llm.usage.tokens") == {instance: 3 * CALL_TOKENS}
    assert receiver.cumulative_totals("llm.usage.requests", status="ok") == {instance: 3}
    assert receiver.service_names() == {"scale-out-test"}
    assert receiver.errors == []
    assert ledger_tokens(sqlite_url(tmp_path)) == (3, 3 * CALL_TOKENS)


@pytest.mark.slow
def test_sigterm_flushes_ledger_and_metrics_then_dies_by_the_signal(server, receiver, procs, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", ledger=sqlite_url(tmp_path))
    proc = procs.start([sys.executable, str(APP), "calls", "3", "--wait"], base_env(server, config, receiver))
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["calls"] == 3
    assert proc.stdout.readline().strip() == "READY"
    assert receiver.metrics == []  # nothing exported yet: the interval is 60 s
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err  # the default action still ends the process
    assert "NOT KILLED" not in out
    (instance,) = receiver.instance_ids()
    assert receiver.cumulative_totals("llm.usage.tokens") == {instance: 3 * CALL_TOKENS}
    assert ledger_tokens(sqlite_url(tmp_path)) == (3, 3 * CALL_TOKENS)


def test_sigterm_flush_chains_to_the_hosts_handler_and_leaves_sig_ign_alone():
    """Host code (gunicorn, uvicorn, the app) that handles SIGTERM keeps its handler: it runs after the flush."""
    before = signal.getsignal(signal.SIGTERM)

    def host_handler(signum: int, frame: object) -> None:
        pass

    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert _bootstrap.install_sigterm_flush() is False
        signal.signal(signal.SIGTERM, host_handler)
        assert _bootstrap.install_sigterm_flush() is True
        assert signal.getsignal(signal.SIGTERM) is _bootstrap._on_sigterm
        _bootstrap.uninstall_sigterm_flush()
        assert signal.getsignal(signal.SIGTERM) is host_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_service_instance_id_is_set_unless_the_user_set_one(monkeypatch):
    from opentelemetry.sdk.resources import Resource

    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert _bootstrap.process_resource().attributes["service.instance.id"]
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7")
    assert _bootstrap.process_resource().attributes["service.instance.id"] == "pod-7"  # the user's wins
    # An SDK without its own instance-id detector: we add a UUID, a new one per process.
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES")
    create = Resource.create

    def old_sdk_create(attributes: Any = None, schema_url: Any = None) -> Resource:
        made = create(attributes, schema_url)
        if attributes and "service.instance.id" in attributes:
            return made
        return Resource({k: v for k, v in made.attributes.items() if k != "service.instance.id"})

    monkeypatch.setattr(Resource, "create", staticmethod(old_sdk_create))
    ids = {_bootstrap.process_resource().attributes["service.instance.id"] for _ in range(2)}
    assert len(ids) == 2 and all(len(str(i)) == 36 for i in ids)


@pytest.mark.slow
def test_exit_action_flushes_metrics_before_terminating(server, receiver, procs, tmp_path):
    report = tmp_path / "exit-report.json"
    config = write_config(tmp_path / "cfg.yaml", ledger=sqlite_url(tmp_path), budgets=[{
        "name": "job", "window": "total", "limit": {"tokens": 30}, "action": "exit", "exit_code": 7,
        "exit_report": str(report)}])
    proc = procs.start([sys.executable, str(APP), "calls", "20"], base_env(server, config, receiver))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err  # os._exit: no atexit, so only our explicit flush exports
    assert len(server.requests) == 4  # used 0, 9, 18, 27 < 30 admitted; the 5th call exits
    (instance,) = receiver.instance_ids()
    assert receiver.cumulative_totals("llm.usage.tokens") == {instance: 4 * CALL_TOKENS}
    assert receiver.cumulative_totals("llm.budget.events", level="exit") == {instance: 1}
    assert ledger_tokens(sqlite_url(tmp_path)) == (4, 4 * CALL_TOKENS)
    assert json.loads(report.read_text())["exit_code"] == 7


@pytest.mark.slow
def test_ci_example_pushes_usage_and_gates_on_the_budget(server, receiver, tmp_path):
    require_binary("opentelemetry-instrument")
    example = ROOT / "examples" / "ci"
    has_gate = importlib.util.find_spec("otel_llm_usage.cli.budget") is not None
    for calls, expected_rc in ((5, 0), (12, 2)):  # limit 100 tokens: 45 is fine, 108 is exceeded
        workdir = tmp_path / f"run-{calls}"
        workdir.mkdir()
        env = base_env(server, example / "otel-llm-usage.yaml", receiver, JOB_CALLS=str(calls),
                       OPENAI_BASE_URL=server.openai_base_url, OTEL_SERVICE_NAME=f"ci-{calls}")
        env.pop("OTEL_METRICS_EXPORTER")  # run.sh's default (otlp) is what is being tested
        script = [str(example / "run.sh")] if has_gate else \
            ["opentelemetry-instrument", sys.executable, str(example / "llm_job.py")]
        if not has_gate:  # run.sh step 1 only; `budget status` is another engineer's command
            env.update(OTEL_METRICS_EXPORTER="otlp", OTEL_LLM_USAGE_LEDGER=f"sqlite://{workdir}/ledger.db")
        proc = subprocess.run(script, env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
        totals = receiver.cumulative_totals("llm.usage.tokens", function="ci-eval")
        assert sum(v for k, v in totals.items() if k in _instances_of(receiver, f"ci-{calls}")) \
            == calls * CALL_TOKENS, proc.stderr
        if has_gate:
            assert proc.returncode == expected_rc, proc.stdout + proc.stderr
            if expected_rc:
                assert "exceeded: ci-llm-job" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr


def _instances_of(receiver: OtlpReceiver, service: str) -> set[str]:
    out = set()
    for request in receiver.metrics:
        for rm in request.resource_metrics:
            attrs = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
            if attrs.get("service.name") == service:
                out.add(attrs["service.instance.id"])
    return out


# --- pre-fork servers ------------------------------------------------------------------------------


def _gunicorn(procs: Procs, server: LoopbackLLMServer, tmp_path: Path, redis: str,
              **extra: str) -> tuple[subprocess.Popen[str], int]:
    gunicorn = require_binary("gunicorn")
    port = free_port()
    env = base_env(server, ROOT / "examples" / "gunicorn" / "otel-llm-usage.yaml", None,
                   OPENAI_BASE_URL=server.openai_base_url, GUNICORN_BIND=f"127.0.0.1:{port}",
                   GUNICORN_WORKERS="2", OTEL_LLM_USAGE_LEDGER=redis, **extra)
    env.pop("OTEL_METRICS_EXPORTER")
    env.update({k: v for k, v in extra.items() if k.startswith("OTEL_")})
    args = [gunicorn, "-c", str(ROOT / "examples" / "gunicorn" / "gunicorn.conf.py")]
    from gunicorn.config import KNOWN_SETTINGS

    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        args.append("--no-control-socket")  # newer gunicorn: no shared ~/.gunicorn socket between tests
    proc = procs.start(args, env, cwd=tmp_path)
    return proc, port


def _get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def _wait_http(url: str, proc: subprocess.Popen[str]) -> None:
    import time

    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            _get(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered: " + (proc.stderr.read() if proc.stderr else "")) \
                    from None
            time.sleep(0.1)


def _scrape(port: int) -> tuple[str, float]:
    """(service.instance.id, llm_usage_requests_total) of one worker's /metrics."""
    instance, requests = None, 0.0
    for family in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics")):
        for s in family.samples:
            if s.name == "target_info":
                instance = s.labels["service_instance_id"]
            if s.name == "llm_usage_requests_total" and s.labels["status"] == "ok":
                requests += s.value
    assert instance
    return instance, requests


N_REQUESTS = 20


@pytest.mark.slow
@pytest.mark.parametrize("export", ["prometheus", "otlp"])
def test_gunicorn_workers_report_separately_and_add_up(export, server, receiver, procs, redis_url, tmp_path):
    base = free_port_pair()
    extra = {"LLM_USAGE_METRICS_BASE_PORT": str(base), "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
             "OTEL_METRICS_EXPORTER": export, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
             "OTEL_SERVICE_NAME": "gunicorn-example"}
    proc, port = _gunicorn(procs, server, tmp_path, redis_url, **extra)
    if export == "prometheus":
        for p in (base, base + 1):  # both workers up, each on its own port (no clash)
            _wait_http(f"http://127.0.0.1:{p}/metrics", proc)
    _wait_http(f"http://127.0.0.1:{port}/healthz", proc)  # no LLM call
    # Concurrent rounds until both workers have served calls: on a loaded machine one sync worker can
    # accept a whole round, and a worker that made no call has no series to show.
    sent, pids = 0, set()
    with ThreadPoolExecutor(4) as pool:
        while len(pids) < 2 and sent < 10 * N_REQUESTS:
            replies = pool.map(lambda _: json.loads(_get(f"http://127.0.0.1:{port}/")), range(N_REQUESTS))
            pids |= {r["pid"] for r in replies}
            sent += N_REQUESTS
    assert len(pids) == 2, "one gunicorn worker never served a request"
    assert len(server.requests) == sent
    if export == "prometheus":
        scraped = dict(_scrape(p) for p in (base, base + 1))
        assert len(scraped) == 2  # two distinct service.instance.id values
        assert sum(scraped.values()) == sent
    proc.send_signal(signal.SIGTERM)  # graceful: workers exit normally and push their last export
    proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
    if export == "otlp":
        totals = receiver.cumulative_totals("llm.usage.requests", status="ok")
        assert sum(totals.values()) == sent
        assert len(totals) == len(pids)  # one series set, under its own service.instance.id, per worker
    assert ledger_tokens(redis_url) == (sent, sent * CALL_TOKENS)  # budgets' shared ledger


# --- fork safety ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ledger", ["redis", "sqlite"])
def test_child_forked_after_instrumentation_records_its_own_calls(ledger, server, procs, tmp_path, request):
    url = request.getfixturevalue("redis_url") if ledger == "redis" else sqlite_url(tmp_path)
    config = write_config(tmp_path / "cfg.yaml", ledger=url, budgets=[
        {"name": "shared", "window": "day", "limit": {"tokens": 100_000}, "action": "block"}])
    proc = procs.start([sys.executable, str(APP), "fork"], base_env(server, config))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = {r["role"]: r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    child, parent = rows["child"], rows["parent"]
    assert parent["child_status"] == 0
    # The child wrote its 3 records itself, not the 2 the parent had queued at the fork...
    assert child["written"] == 3 and parent["written"] == 3
    # ...on a writer thread and a budget refresh thread of its own, over its own connection.
    assert child["writer_thread_alive"] and child["budget_thread_alive"]
    if ledger == "redis":
        assert child["redis_pool_pid"] == child["pid"] and parent["redis_pool_pid"] == parent["pid"]
    assert child["errors"] == {} and parent["errors"] == {}
    assert child["degraded_ops"] == 0 and parent["degraded_ops"] == 0
    assert "internal error" not in err
    assert len(server.requests) == 6
    assert ledger_tokens(url) == (6, 6 * CALL_TOKENS)
    assert _budget_used(config, url) == (6 * CALL_TOKENS, 0)  # counters: all settled, none in flight


def _budget_used(config: Path, url: str) -> tuple[int, int]:
    """(used tokens, in-flight tokens) of the config's only budget, read from the shared counters."""
    cfg = load_config(config, env={"OTEL_LLM_USAGE_LEDGER": url})
    store, counters = open_ledger(cfg.ledger)
    try:
        engine = BudgetEngine(cfg.budgets, counters, currency="USD", to_reporting=lambda a, c: a,
                              estimate_cost=lambda r, t: None)
        (budget,) = cfg.budgets
        engine.planner.remember(budget, "all")
        (row,) = engine.status()
        return int(row["used"]), int(row["in_flight"])
    finally:
        store.close()
        counters.close()


# --- one budget, four processes ------------------------------------------------------------------

LIMIT_TOKENS = 120 * CALL_TOKENS + 5  # about 30 calls per process; not a multiple of 9, so overshoot shows


@pytest.mark.slow
@pytest.mark.parametrize("store", ["redis_url", "redis_cluster_url"])
def test_four_processes_share_one_budget_within_the_documented_bound(server, receiver, procs, store, tmp_path,
                                                                      request):
    """On one redis-server and on a three-master Redis Cluster (issue 22), with leases."""
    redis_url = request.getfixturevalue(store)
    config = write_config(tmp_path / "cfg.yaml", ledger=redis_url, budgets=[
        {"name": "fleet", "window": "day", "limit": {"tokens": LIMIT_TOKENS}, "action": "block"}])
    env = base_env(server, config, receiver)
    workers = [procs.start([sys.executable, str(APP), "until-blocked"], env) for _ in range(4)]
    for w in workers:
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "READY", w.stderr.read() if w.stderr else ""
    for w in workers:  # release them together so they really compete
        assert w.stdin is not None
        w.stdin.write("GO\n")
        w.stdin.flush()
    results = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        results.append(last_json(out))
    admitted = sum(r["admitted"] for r in results)
    assert all(r["errors"] == {} for r in results), results

    used, in_flight = _budget_used(config, redis_url)
    overshoot = used - LIMIT_TOKENS
    print(f"4 processes: admitted {[r['admitted'] for r in results]} = {admitted} calls, "
          f"used {used} of {LIMIT_TOKENS} tokens, overshoot {overshoot} (bound < {RESERVATION})")
    # engine.py's bound holds for any number of processes: admission needs used + in-flight < limit,
    # so used + in-flight stays below limit + one reservation, and when reservations cover the actual
    # usage, so does the final usage.
    assert in_flight == 0
    assert 0 <= overshoot < RESERVATION
    assert used == admitted * CALL_TOKENS
    assert len(server.requests) == admitted  # every refused call stayed local

    ok_records, ledger_total = ledger_tokens(redis_url)
    assert (ok_records, ledger_total) == (admitted, used)
    # The metrics side: one cumulative series set per process, summed, equals the ledger.
    totals = receiver.wait_for(lambda r: len(r.cumulative_totals("llm.usage.tokens")) == 4
                               and r.cumulative_totals("llm.usage.tokens"), timeout=WAIT_S)
    assert len(totals) == 4  # four distinct service.instance.id values
    assert sum(totals.values()) == ledger_total
    requests = receiver.cumulative_totals("llm.usage.requests", status="ok")
    assert sum(requests.values()) == admitted
    assert sum(receiver.cumulative_totals("llm.usage.requests", status="blocked").values()) == 4
    assert receiver.errors == []
