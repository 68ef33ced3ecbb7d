# SPDX-License-Identifier: Apache-2.0
"""``LLMUsageInstrumentor``: patches whichever of openai / dashscope is importable.

Zero-code::

    pip install otel-llm-usage
    opentelemetry-instrument python app.py     # /metrics on :9464

Programmatic::

    LLMUsageInstrumentor().instrument(tracer_provider=tp, meter_provider=mp, config=cfg)
    ...
    LLMUsageInstrumentor().uninstrument()      # every patched method restored
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from .attribution import carry_attribution
from .config import Config, ConfigError, load_config
from .instrumentation.contract import Router, fixed_route
from .instrumentation.lifecycle import CallHandler, note_attempt
from .runtime.core import Runtime, build_runtime, clear_runtime

__all__ = ["LLMUsageInstrumentor"]

logger = logging.getLogger("otel_llm_usage")


def _sync_wrapper(handler: CallHandler, route: Router) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return handler.call_sync(route, wrapped, instance, args, kwargs)

    return wrapper


def _async_wrapper(handler: CallHandler, route: Router) -> Callable[..., Any]:
    async def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await handler.call_async(route, wrapped, instance, args, kwargs)

    return wrapper


def _targets(config: Config) -> list[tuple[str, str, str, bool, Router]]:
    """(module, class, method, is_async, router) for every surface we know how to read."""
    out: list[tuple[str, str, str, bool, Router]] = []
    from .instrumentation import openai as oa

    def adapter(responses_api: bool) -> oa.OpenAIAdapter:
        return oa.OpenAIAdapter(
            provider_hosts=dict(config.provider_hosts),
            capture_content=config.capture_content,
            capture_max_chars=config.capture_content_max_chars,
            stream_include_usage=config.stream_include_usage,
            responses_api=responses_api,
        )

    route = oa.router(adapter(False), adapter(True))
    for module, cls, name, is_async in oa.CLIENT_METHODS:
        out.append((module, cls, name, is_async, route))
    try:
        from .instrumentation import dashscope as ds
    except ImportError:
        return out
    for module, cls, name, is_async, spec in ds.targets(config):
        out.append((module, cls, name, is_async, fixed_route(spec)))
    return out


def _attempt_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    note_attempt()
    return wrapped(*args, **kwargs)


def _submit_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``ThreadPoolExecutor.submit``: the task runs with the submitter's attribution.

    ``loop.run_in_executor`` (used by langchain-community's ChatTongyi and many other async
    wrappers of sync SDKs) submits here without copying context variables, so every call it
    makes would be labelled ``unknown``. Only our own attribution is carried, never the rest of
    the caller's context, so the host's code behaves exactly as before."""
    if not args:
        return wrapped(*args, **kwargs)
    return wrapped(carry_attribution(args[0]), *args[1:], **kwargs)


def _patch(patched: list[tuple[Any, str, Any]], module_name: str, cls_name: str, method: str,
           wrapper: Callable[..., Any]) -> None:
    """Wrap ``module.cls.method`` where the class *defines* it; a missing one (older SDK) is skipped."""
    try:
        owner = getattr(importlib.import_module(module_name), cls_name)
        original = vars(owner)[method]
    except (ImportError, AttributeError, KeyError):
        return
    wrapt.wrap_function_wrapper(owner, method, wrapper)
    patched.append((owner, method, original))


class LLMUsageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Auto-instrumentation entry point ``opentelemetry_instrumentor: llm_usage``."""

    _runtime: Runtime | None = None
    _patched: list[tuple[Any, str, Any]] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        # Either SDK is optional; we patch what is importable rather than let the
        # loader skip us when one of them is missing.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        config = kwargs.get("config")
        if config is None:
            try:
                config = load_config(kwargs.get("config_path"))
            except ConfigError as exc:
                if _under_auto_instrumentation():
                    _refuse_to_start(exc)
                raise
        tracer_provider = kwargs.get("tracer_provider")
        meter_provider = kwargs.get("meter_provider")
        if meter_provider is None and (kwargs.get("setup_providers") or _under_auto_instrumentation()):
            from .runtime.bootstrap import setup_default_providers

            setup_default_providers()
        # ``clock`` lets tests drive budget windows; it is the wall clock otherwise.
        runtime = build_runtime(config, tracer_provider, meter_provider, **({"clock": kwargs["clock"]}
                                                                           if "clock" in kwargs else {}))
        type(self)._runtime = runtime
        patched: list[tuple[Any, str, Any]] = []
        for module_name, cls_name, method, is_async, route in _targets(config):
            factory = _async_wrapper if is_async else _sync_wrapper
            _patch(patched, module_name, cls_name, method, factory(runtime.handler, route))
        from .instrumentation.openai import ATTEMPT_HOOKS

        for module_name, cls_name, method in ATTEMPT_HOOKS:
            _patch(patched, module_name, cls_name, method, _attempt_wrapper)
        if config.attribution.propagate_to_threads:
            _patch(patched, "concurrent.futures.thread", "ThreadPoolExecutor", "submit", _submit_wrapper)
        type(self)._patched = patched
        from .runtime.bootstrap import install_sigterm_flush

        # Not only when the providers are ours: an app passing its own would lose what the ledger
        # writer still holds (up to a second of records) to a plain SIGTERM.
        install_sigterm_flush()
        logger.debug("otel-llm-usage instrumented %d methods", len(patched))

    def _uninstrument(self, **kwargs: Any) -> None:
        from .runtime.bootstrap import uninstall_sigterm_flush

        uninstall_sigterm_flush()
        for owner, method, original in type(self)._patched:
            if getattr(vars(owner).get(method), "__wrapped__", None) is original:
                # Put back the descriptor itself: ``unwrap`` would store the *bound* method
                # of a classmethod (DashScope's ``Generation.call``) in its place.
                setattr(owner, method, original)
            else:
                unwrap(owner, method)
        type(self)._patched = []
        runtime = type(self)._runtime
        if runtime is not None:
            runtime.shutdown()
            clear_runtime(runtime)
        type(self)._runtime = None

    @property
    def runtime(self) -> Runtime | None:
        return type(self)._runtime


def _refuse_to_start(exc: ConfigError) -> None:
    """Under ``opentelemetry-instrument`` an invalid config ends the process before the app starts.

    The loader would log our ConfigError as a traceback and start the app anyway, uninstrumented:
    every budget the user configured (limits, ``action: block``/``exit``) silently unenforced, and the
    instrumentors after ours skipped. A budget is a promise about spending, so not starting is the
    safe failure, as it is for ``instrument()`` in code, which raises the same error. ``os._exit``:
    we are inside ``sitecustomize``, where ``SystemExit`` is not reliably an exit, and nothing of
    ours (threads, ports, files) is running yet."""
    sys.stderr.write(f"otel-llm-usage: not starting: {exc}\n"
                     "  fix the file (check it with `otel-llm-usage check-config FILE`), or run without usage "
                     "tracking and budgets with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=llm_usage\n")
    sys.stderr.flush()
    os._exit(2)


def _under_auto_instrumentation() -> bool:
    return "opentelemetry.instrumentation.auto_instrumentation.sitecustomize" in sys.modules \
        or "opentelemetry.instrumentation.auto_instrumentation" in sys.modules
