# SPDX-License-Identifier: Apache-2.0
"""Which provider an endpoint belongs to, from its URL (not from the SDK used).

The OpenAI client talks to many vendors' OpenAI-compatible APIs; pricing and
``gen_ai.provider.name`` must follow the endpoint. Users can add their own
gateways with the ``provider_hosts`` config key (``host`` or ``host:port``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["provider_from_endpoint"]

_SUFFIXES = (
    ("api.openai.com", "openai"),
    ("dashscope.aliyuncs.com", "dashscope"),
    ("dashscope-intl.aliyuncs.com", "dashscope"),
    ("dashscope-us.aliyuncs.com", "dashscope"),
    ("maas.aliyuncs.com", "dashscope"),  # <workspace>.<region>.maas.aliyuncs.com (Model Studio workspaces)
    ("api.deepseek.com", "deepseek"),
    ("open.bigmodel.cn", "zhipu"),
    ("openai.azure.com", "azure.ai.openai"),
    ("cognitiveservices.azure.com", "azure.ai.openai"),
    ("api.moonshot.cn", "moonshot"),
    ("api.moonshot.ai", "moonshot"),
)


def provider_from_endpoint(
    host: str | None,
    port: int | None,
    path: str = "",
    *,
    overrides: Mapping[str, str] | None = None,
    default: str | None = None,
) -> str:
    host = (host or "").lower()
    if path.startswith("/compatible-mode") or "/compatible-mode/" in path:
        return "dashscope"  # DashScope's OpenAI-compatible mode, whatever host or gateway fronts it
    if overrides:
        hit = overrides.get(f"{host}:{port}") or overrides.get(host)
        if hit:
            return hit
    for suffix, provider in _SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return provider
    if host.startswith("ark.") and host.endswith(".volces.com"):
        return "volcengine"
    return default or host or "unknown"
