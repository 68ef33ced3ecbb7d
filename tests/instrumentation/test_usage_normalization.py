# SPDX-License-Identifier: Apache-2.0
"""Usage normalization is pure: every provider shape, and odd values, without any SDK."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_llm_usage.instrumentation.providers import provider_from_endpoint
from otel_llm_usage.usage import billable_breakdown, estimate_tokens, normalize_usage

CASES = [
    pytest.param({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, (10, 5, 0, 0), id="chat"),
    pytest.param({"prompt_tokens": 10, "completion_tokens": 5,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}}, (10, 5, 4, 2), id="chat-details"),
    pytest.param({"input_tokens": 7, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 7},
                  "output_tokens_details": {"reasoning_tokens": 3}}, (7, 3, 7, 3), id="responses"),
    pytest.param({"prompt_tokens": 9, "total_tokens": 9}, (9, 0, 0, 0), id="embeddings"),
    pytest.param({"total_tokens": 12}, (12, 0, 0, 0), id="total-only"),
    pytest.param({"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 6,
                  "prompt_cache_miss_tokens": 4}, (10, 1, 6, 0), id="deepseek-cache"),
    pytest.param({"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}, (5, 2, 0, 0), id="dashscope"),
    pytest.param({"prompt_tokens": "12", "completion_tokens": "3"}, (12, 3, 0, 0), id="numeric-strings"),
    pytest.param({"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 99}},
                 (3, 1, 3, 0), id="cached-clamped-to-input"),
    pytest.param({"prompt_tokens": -4, "completion_tokens": 2}, (0, 2, 0, 0), id="negative-dropped"),
    pytest.param({"prompt_tokens": 10**15, "completion_tokens": 2}, (0, 2, 0, 0), id="huge-dropped"),
    pytest.param({"prompt_tokens": None, "completion_tokens_details": None, "completion_tokens": 1},
                 (0, 1, 0, 0), id="nulls"),
    # "²" is a digit to str.isdigit() but not a number to int(): found by the property test below.
    pytest.param({"prompt_tokens": 4, "completion_tokens": "²"}, (4, 0, 0, 0), id="superscript-dropped"),
    pytest.param({"prompt_tokens": "١٢", "completion_tokens": 1}, (12, 1, 0, 0), id="arabic-indic-digits"),
]


@pytest.mark.parametrize(("usage", "expected"), CASES)
def test_shapes(usage, expected):
    t = normalize_usage(usage)
    assert (t.input_tokens, t.output_tokens, t.cached_input_tokens, t.reasoning_tokens) == expected


@pytest.mark.parametrize("usage", [None, {}, {"foo": 1}, {"prompt_tokens": "lots"}, {"prompt_tokens": True}])
def test_unusable_usage_is_none(usage):
    assert normalize_usage(usage) is None


counts = st.one_of(st.none(), st.integers(-10, 10**12), st.text(max_size=5), st.floats(allow_nan=True))


@given(inp=counts, out=counts, cached=counts, reasoning=counts)
def test_breakdown_is_disjoint_and_never_negative(inp, out, cached, reasoning):
    t = normalize_usage({"prompt_tokens": inp, "completion_tokens": out,
                         "prompt_tokens_details": {"cached_tokens": cached},
                         "completion_tokens_details": {"reasoning_tokens": reasoning}})
    if t is None:
        return
    parts = billable_breakdown(t)
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == t.total_tokens


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_estimate_is_monotonic_and_nonzero_for_text(latin, cjk):
    n = estimate_tokens(latin, cjk)
    assert n >= (1 if latin + cjk else 0)
    assert estimate_tokens(latin + 1, cjk) >= n


@pytest.mark.parametrize(("host", "port", "path", "expected"), [
    ("api.openai.com", 443, "/v1", "openai"),
    ("dashscope.aliyuncs.com", 443, "/compatible-mode/v1", "dashscope"),
    ("dashscope-intl.aliyuncs.com", 443, "/compatible-mode/v1", "dashscope"),
    ("api.deepseek.com", 443, "/", "deepseek"),
    ("open.bigmodel.cn", 443, "/api/paas/v4", "zhipu"),
    ("ark.cn-beijing.volces.com", 443, "/api/v3", "volcengine"),
    ("myres.openai.azure.com", 443, "/openai", "azure.ai.openai"),
    ("llm-gateway.internal", 8080, "/v1", "llm-gateway.internal"),
    ("127.0.0.1", 8000, "/compatible-mode/v1", "dashscope"),
])
def test_provider_from_endpoint(host, port, path, expected):
    assert provider_from_endpoint(host, port, path) == expected


def test_provider_overrides_win():
    assert provider_from_endpoint("gw", 8080, "/v1", overrides={"gw:8080": "openai"}) == "openai"
    assert provider_from_endpoint("gw", 9090, "/v1", overrides={"gw": "deepseek"}) == "deepseek"


_CJK_RANGES = (("\u2e80", "\u9fff"), ("\uac00", "\ud7af"), ("\uf900", "\ufaff"))
# Inside and just outside each range, plus ordinary CJK, Hangul and half-width text.
_EDGES = "你好，世界。한국어ｱ" + "".join(lo + hi + chr(ord(lo) - 1) + chr(ord(hi) + 1) for lo, hi in _CJK_RANGES)


def _count_by_definition(text: str) -> tuple[int, int]:
    cjk = sum(1 for ch in text if any(lo <= ch <= hi for lo, hi in _CJK_RANGES))
    return len(text) - cjk, cjk


@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(_EDGES))))
def test_count_text_counts_cjk_like_its_definition(text: str) -> None:
    from otel_llm_usage.usage import count_text

    assert count_text(text) == _count_by_definition(text)


_COUNTS = ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens")


@given(st.dictionaries(st.sampled_from(_COUNTS), counts))
def test_usage_of_counts_only_reads_as_any_other_shape_of_it(usage):
    """Plain dicts and SDK models of counts alone (embeddings, most chat calls) take a shorter path;
    any other mapping takes the general one, and both must read the same numbers."""
    from types import MappingProxyType

    assert normalize_usage(usage) == normalize_usage(MappingProxyType(usage))
