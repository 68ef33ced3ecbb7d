# SPDX-License-Identifier: Apache-2.0
"""A local monitoring stack without Docker: app → Prometheus → Alertmanager.

``otel-llm-usage stack up`` and the end-to-end tests both start their processes
through this module, from the Debian ``prometheus`` / ``prometheus-alertmanager``
binaries and the configs under ``deploy/``, so the two cannot drift::

    with LocalStack(workdir) as stack:
        stack.start_app(["otel-llm-usage", "demo", "--serve", "--port", "{port}"])
        stack.start_prometheus(rule_files=[generated])
        stack.start_alertmanager()
        print(stack.urls())

Every process is stopped when the ``with`` block ends, whatever happens inside.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._ports import free_port

__all__ = [
    "APP_JOB",
    "LocalStack",
    "Service",
    "StackError",
    "default_deploy_dir",
    "find_binary",
    "free_port",
    "render_alertmanager_config",
    "render_prometheus_config",
    "wait_until",
]

#: The scrape job of the instrumented app; the alert rules key on it.
APP_JOB = "otel-llm-usage"
PROMETHEUS_BINARIES = ("prometheus",)
# Debian installs Alertmanager as prometheus-alertmanager; upstream tarballs as alertmanager.
ALERTMANAGER_BINARIES = ("alertmanager", "prometheus-alertmanager")


class StackError(RuntimeError):
    """A stack process could not be started or did not become ready."""


def default_deploy_dir() -> Path:
    """``deploy/`` of this checkout, else of the current directory."""
    here = Path(__file__).resolve().parents[2] / "deploy"
    return here if here.is_dir() else Path.cwd() / "deploy"


def find_binary(names: Sequence[str]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2,
               alive: Callable[[], bool] | None = None) -> bool:
    """Poll ``check`` until it is true, ``alive`` turns false, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if alive is not None and not alive():
            return False
        time.sleep(interval)
    return check()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= int(resp.status) < 300
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Service:
    """One started process, its URL and log file."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    port: int

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def _resolve_rule_files(patterns: Sequence[str], base_dir: Path) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
        out.extend(sorted(glob.glob(full)) if any(c in full for c in "*?[") else [full])
    return out


def render_prometheus_config(base: Path, *, app_targets: Sequence[str], alertmanager: str | None,
                             prometheus_target: str | None = None, rule_files: Sequence[Path] = (),
                             scrape_interval: str | None = None,
                             evaluation_interval: str | None = None) -> dict[str, Any]:
    """``deploy/prometheus/prometheus.yml`` with local targets and absolute rule paths filled in."""
    config: dict[str, Any] = yaml.safe_load(base.read_text(encoding="utf-8"))
    glob_cfg = config.setdefault("global", {})
    if scrape_interval:
        glob_cfg["scrape_interval"] = scrape_interval
    if evaluation_interval:
        glob_cfg["evaluation_interval"] = evaluation_interval
    config["rule_files"] = [*_resolve_rule_files(config.get("rule_files", []), base.parent),
                            *(str(Path(p).resolve()) for p in rule_files)]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    jobs = []
    for job in config.get("scrape_configs", []):
        if job.get("job_name") == APP_JOB:
            job["static_configs"] = [{"targets": list(app_targets)}]
        elif job.get("job_name") == "prometheus":
            if not prometheus_target:
                continue
            job["static_configs"] = [{"targets": [prometheus_target]}]
        jobs.append(job)
    if not any(j.get("job_name") == APP_JOB for j in jobs):
        raise StackError(f"{base}: no scrape job named {APP_JOB!r}")
    config["scrape_configs"] = jobs
    return config


def render_alertmanager_config(base: Path, *, webhook_url: str | None = None, group_wait: str | None = None,
                               group_interval: str | None = None,
                               repeat_interval: str | None = None) -> dict[str, Any]:
    """``deploy/alertmanager/alertmanager.yml`` with every webhook (and optionally the timings) replaced."""
    config: dict[str, Any] = yaml.safe_load(base.read_text(encoding="utf-8"))
    if webhook_url:
        for receiver in config.get("receivers", []):
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = webhook_url
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval),
                           ("repeat_interval", repeat_interval)):
            if value and (route is config["route"] or key in route):
                route[key] = value
    return config


@dataclass
class LocalStack:
    """Starts and stops the app, Prometheus and Alertmanager under one working directory."""

    workdir: Path
    deploy_dir: Path = field(default_factory=default_deploy_dir)
    host: str = "127.0.0.1"
    ready_timeout: float = 30.0
    services: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        # Reverse start order: Prometheus goes before the app and Alertmanager it talks to.
        for service in reversed(list(self.services.values())):
            service.stop()

    def _spawn(self, name: str, argv: Sequence[str], port: int, ready_url: str, url: str,
               env: Mapping[str, str] | None = None) -> Service:
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing after this returns
        try:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env=dict(env) if env is not None else None, cwd=self.workdir)
        finally:
            log.close()
        service = Service(name, proc, url, log_path, port)
        self.services[name] = service
        if not wait_until(lambda: _http_ok(ready_url), self.ready_timeout, alive=service.alive):
            state = f"exited with {proc.returncode}" if proc.poll() is not None else "not ready"
            raise StackError(f"{name} {state} after {self.ready_timeout:.0f}s ({ready_url}); "
                             f"log {log_path}:\n{service.log_tail()}")
        return service

    def start_app(self, argv: Sequence[str], *, port: int | None = None,
                  env: Mapping[str, str] | None = None, name: str = "app") -> Service:
        """Start an instrumented app; ``{port}`` in ``argv`` becomes its metrics port."""
        port = port or free_port(self.host)
        argv = [a.replace("{port}", str(port)) for a in argv]
        url = f"http://{self.host}:{port}"
        return self._spawn(name, argv, port, f"{url}/metrics", f"{url}/metrics", env)

    def _start_server(self, name: str, binaries: Sequence[str], package: str, binary: str | None,
                      config: dict[str, Any], port: int, flags: Sequence[str]) -> Service:
        binary = binary or find_binary(binaries)
        if binary is None:
            raise StackError(f"{binaries[0]} not found on PATH (Debian: apt-get install {package})")
        config_path = self.workdir / f"{name}.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        url = f"http://{self.host}:{port}"
        argv = [binary, f"--config.file={config_path}", f"--web.listen-address={self.host}:{port}",
                "--log.level=warn", *flags]
        return self._spawn(name, argv, port, f"{url}/-/ready", url)

    def start_prometheus(self, *, port: int | None = None, rule_files: Sequence[Path] = (),
                         scrape_interval: str | None = None, evaluation_interval: str | None = None,
                         binary: str | None = None) -> Service:
        """Start Prometheus scraping the app and alerting to Alertmanager, if those were started."""
        port = port or free_port(self.host)
        app = self.services.get("app")
        am = self.services.get("alertmanager")
        config = render_prometheus_config(
            self.deploy_dir / "prometheus" / "prometheus.yml",
            app_targets=[f"{self.host}:{app.port}"] if app else [],
            alertmanager=f"{self.host}:{am.port}" if am else None,
            prometheus_target=f"{self.host}:{port}", rule_files=rule_files,
            scrape_interval=scrape_interval, evaluation_interval=evaluation_interval)
        return self._start_server("prometheus", PROMETHEUS_BINARIES, "prometheus", binary, config, port,
                                  [f"--storage.tsdb.path={self.workdir / 'prometheus-data'}"])

    def start_alertmanager(self, *, port: int | None = None, webhook_url: str | None = None,
                           fast: bool = False, binary: str | None = None) -> Service:
        """Start Alertmanager; ``fast`` shortens grouping delays to seconds (for tests and demos)."""
        port = port or free_port(self.host)
        timings = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"} if fast else {}
        config = render_alertmanager_config(self.deploy_dir / "alertmanager" / "alertmanager.yml",
                                            webhook_url=webhook_url, **timings)
        # An empty cluster address turns off gossip: no second port, no peers to wait for.
        return self._start_server("alertmanager", ALERTMANAGER_BINARIES, "prometheus-alertmanager", binary,
                                  config, port, [f"--storage.path={self.workdir / 'alertmanager-data'}",
                                                 "--cluster.listen-address="])

    def urls(self) -> dict[str, str]:
        return {name: s.url for name, s in self.services.items()}
