# SPDX-License-Identifier: Apache-2.0
"""Label caps, label dropping, user hashing, and no content anywhere by default."""

from __future__ import annotations

import logging

import openai

from otel_llm_usage import usage_context
from otel_llm_usage.config import AttributionSettings, Config
from tests.conftest import close_otel, make_otel

SECRET_PROMPT = "the-secret-launch-codes-are-4242"
API_KEY = "sk-live-DO-NOT-LEAK-123456"


def _call(server, user, **kw):
    c = openai.OpenAI(base_url=server.openai_base_url, api_key=API_KEY, max_retries=0)
    with usage_context(user=user):
        return c.chat.completions.create(model="gpt-4o-mini",
                                         messages=[{"role": "user", "content": SECRET_PROMPT}], **kw)


def test_user_label_cap_folds_new_values_into_overflow(llm_server):
    cfg = Config(attribution=AttributionSettings(max_label_values=3), provider_hosts={"127.0.0.1": "openai"})
    o = make_otel(llm_server, cfg)
    try:
        for i in range(8):
            _call(llm_server, f"user-{i}")
        users = {lbl["user"] for lbl, _ in o.samples("llm_usage_requests_total")}
        assert users == {"user-0", "user-1", "user-2", "__overflow__"}
        assert o.value("llm_usage_requests_total", user="__overflow__") == 5
        # Spans keep the real value: the cap only protects metric cardinality.
        assert {s.attributes["user.id"] for s in o.spans()} == {f"user-{i}" for i in range(8)}
    finally:
        close_otel(o)


def test_dropped_labels_are_absent(llm_server):
    cfg = Config(attribution=AttributionSettings(metric_labels=("provider", "model", "function")),
                 provider_hosts={"127.0.0.1": "openai"})
    o = make_otel(llm_server, cfg)
    try:
        _call(llm_server, "someone")
        ((labels, value),) = o.samples("llm_usage_requests_total")
        assert "user" not in labels and "session" not in labels and "anchor" not in labels
        assert value == 1
    finally:
        close_otel(o)


def test_hashed_users_never_appear_raw(llm_server):
    cfg = Config(attribution=AttributionSettings(hash_users=True, hash_key="k1"),
                 provider_hosts={"127.0.0.1": "openai"})
    o = make_otel(llm_server, cfg)
    try:
        _call(llm_server, "alice@example.com")
        (rec,) = o.records()
        assert rec.user != "alice@example.com" and len(rec.user) == 16
        assert "alice" not in o.scrape()
        assert o.spans()[0].attributes["user.id"] == rec.user
    finally:
        close_otel(o)


def test_no_prompt_completion_or_key_in_telemetry_by_default(otel, caplog):
    caplog.set_level(logging.DEBUG, logger="otel_llm_usage")
    _call(otel.server, "u1")
    list(openai.OpenAI(base_url=otel.server.openai_base_url, api_key=API_KEY, max_retries=0)
         .chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": SECRET_PROMPT}],
                                  stream=True))
    # The SDKs log request bodies at DEBUG themselves; we only answer for our own loggers.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("otel_llm_usage")]
    blobs = [otel.scrape(), *ours]
    for span in otel.spans():
        blobs.append(repr(dict(span.attributes or {})))
        blobs.extend(repr(e.attributes) for e in span.events)
    for rec in otel.records():
        blobs.append(repr(rec))
    text = "\n".join(blobs)
    assert SECRET_PROMPT not in text
    assert API_KEY not in text
    assert "gen_ai.input.messages" not in text


def test_capture_content_is_opt_in_and_capped(llm_server):
    cfg = Config(capture_content=True, capture_content_max_chars=20, provider_hosts={"127.0.0.1": "openai"})
    o = make_otel(llm_server, cfg)
    try:
        _call(llm_server, "u1")
        attrs = o.spans()[0].attributes
        assert attrs["gen_ai.input.messages"].startswith('[{"role": "user"')
        assert len(attrs["gen_ai.input.messages"]) == 20
        assert "gen_ai.output.messages" in attrs
    finally:
        close_otel(o)


def test_100k_distinct_users_stay_within_the_series_cap(otel):
    from otel_llm_usage import record_usage

    for i in range(100_000):
        record_usage(provider="openai", model="gpt-4o-mini", input_tokens=1, user=f"user-{i}")
    users = {lbl["user"] for lbl, _ in otel.samples("llm_usage_requests_total")}
    assert len(users) == 1001  # the default cap of 1000 distinct values, plus __overflow__
    assert otel.value("llm_usage_requests_total", user="__overflow__") == 99_000
    assert otel.value("llm_usage_requests_total") == 100_000  # folded, never dropped


def test_no_prompt_or_key_in_the_sqlite_ledger_file(llm_server, tmp_path):
    db = tmp_path / "ledger.db"
    o = make_otel(llm_server, Config(ledger=f"sqlite:///{db}", provider_hosts={"127.0.0.1": "openai"}))
    try:
        _call(llm_server, "u1")
        assert len(o.records()) == 1
    finally:
        close_otel(o)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("ledger.db"))
    assert b"gpt-4o-mini" in raw  # the record is there …
    assert SECRET_PROMPT.encode() not in raw and API_KEY.encode() not in raw  # … its content is not
