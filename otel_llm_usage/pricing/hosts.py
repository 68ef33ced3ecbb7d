# SPDX-License-Identifier: Apache-2.0
"""Which provider, and which price region, an endpoint host belongs to (provider names as callers
and gateways spell them, mapped to the catalogs' names). Two providers bill by region with
prices of their own: Alibaba Model Studio (DashScope) and Moonshot (Kimi: the China platform in
CNY, the international one in USD, at list prices that are not one exchange rate apart)."""

from __future__ import annotations

__all__ = ["NAMED_PROVIDERS", "REGIONAL_PROVIDERS", "canonical_provider", "dashscope_region", "price_region"]

_PROVIDER_ALIASES = {
    "openai": "openai",
    "azure.ai.openai": "openai",
    "az.ai.openai": "openai",
    "azure": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "dashscope": "dashscope",
    "alibaba": "dashscope",
    "aliyun": "dashscope",
    "bailian": "dashscope",
    "deepseek": "deepseek",
    "zhipu": "zhipu",
    "zhipuai": "zhipu",
    "bigmodel": "zhipu",
    "volcengine": "volcengine",
    "volcano": "volcengine",
    "doubao": "volcengine",
    "ark": "volcengine",
    "moonshot": "moonshot",
    "moonshotai": "moonshot",
    "kimi": "moonshot",
}

# Host suffixes of the providers' own endpoints (checked with endswith on the hostname).
_HOST_PROVIDERS = (
    ("dashscope-intl.aliyuncs.com", "dashscope"),
    ("dashscope-us.aliyuncs.com", "dashscope"),
    ("dashscope.aliyuncs.com", "dashscope"),
    ("maas.aliyuncs.com", "dashscope"),  # Model Studio workspace endpoints: <ws>.<region-id>.maas...
    ("api.openai.com", "openai"),
    ("openai.azure.com", "openai"),
    ("cognitiveservices.azure.com", "openai"),
    ("api.deepseek.com", "deepseek"),
    ("bigmodel.cn", "zhipu"),
    ("volces.com", "volcengine"),
    ("api.moonshot.cn", "moonshot"),
    ("api.moonshot.ai", "moonshot"),
)
# Provider names that are not a hostname: a call reported under one of them is never priced by
# model name alone (the user, or the host table, said which provider it is).
NAMED_PROVIDERS = frozenset({*_PROVIDER_ALIASES, *_PROVIDER_ALIASES.values(), *(n for _, n in _HOST_PROVIDERS)})
# Model Studio region ids in maas.aliyuncs.com hosts -> the catalog region that prices them.
_MAAS_REGIONS = {"cn-beijing": "cn", "ap-southeast-1": "intl", "cn-hongkong": "hk", "us-east-1": "us"}

# Trailing snapshot markers: -2024-08-06, -20240806, -0613, -250115, -latest.


def _hostname(server_address: str | None) -> str:
    if not server_address:
        return ""
    host = server_address.strip().lower()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0]
    return host.rsplit("@", 1)[-1].split(":", 1)[0]


def canonical_provider(provider: str | None, server_address: str | None = None) -> str:
    """The catalog provider for what the instrumentation reported (see module docstring)."""
    host = _hostname(server_address)
    for suffix, name in _HOST_PROVIDERS:
        if host == suffix or host.endswith("." + suffix):
            return name
    raw = (provider or "").strip().lower()
    if raw in _PROVIDER_ALIASES:
        return _PROVIDER_ALIASES[raw]
    if "." in raw:
        # The instrumentation uses the hostname for unknown compatible endpoints.
        for suffix, name in _HOST_PROVIDERS:
            if raw.endswith(suffix):
                return name
    return raw or "unknown"


def _host_is(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


def dashscope_region(server_address: str | None) -> str:
    """The DashScope price region of an endpoint (see the module docstring). A Model Studio region
    this catalog has no prices for comes back as its own id, which no entry carries: unpriced."""
    if "dashscope-intl" in (server_address or "").lower():
        return "intl"
    host = _hostname(server_address)
    if _host_is(host, "dashscope-us.aliyuncs.com"):
        return "us"
    if _host_is(host, "cn-hongkong.dashscope.aliyuncs.com"):
        return "hk"
    if host.endswith(".maas.aliyuncs.com"):
        region_id = host[: -len(".maas.aliyuncs.com")].rsplit(".", 1)[-1]
        return _MAAS_REGIONS.get(region_id, region_id)
    return "cn"


def moonshot_region(server_address: str | None) -> str:
    """``intl`` for the international platform (``api.moonshot.ai``), else ``cn``: the China platform
    (``api.moonshot.cn``), which is also where a call reported as "moonshot" without a host goes."""
    return "intl" if _host_is(_hostname(server_address), "moonshot.ai") else "cn"


_REGION_OF = {"dashscope": dashscope_region, "moonshot": moonshot_region}
#: Providers whose catalogs carry a region: a call is priced from its own region's entries only.
REGIONAL_PROVIDERS = frozenset(_REGION_OF)


def price_region(provider: str, server_address: str | None) -> str | None:
    """The price region of a call to a canonical ``provider`` (``None`` for a provider without regions)."""
    region_of = _REGION_OF.get(provider)
    return None if region_of is None else region_of(server_address)
