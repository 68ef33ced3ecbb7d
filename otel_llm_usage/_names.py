# SPDX-License-Identifier: Apache-2.0
"""Every attribute, metric and label name that crosses a module or tool boundary.

Dashboards, alert rules and tests key on these strings, so they live in one
place. GenAI names follow the OpenTelemetry GenAI semantic conventions as
published in opentelemetry-semantic-conventions 0.66b (read 2026-11-26).
"""

from __future__ import annotations

# --- GenAI semantic-convention span / metric attributes -------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_EMBEDDINGS_DIMENSION_COUNT = "gen_ai.embeddings.dimension.count"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"

# --- attribution (design.md table) -----------------------------------------
ATTR_FUNCTION = "llm_usage.function"
ATTR_USER = "user.id"
ATTR_SESSION = "session.id"
ATTR_ANCHOR = "llm_usage.anchor"
ATTR_USAGE_SOURCE = "llm_usage.usage_source"
ATTR_COST = "llm_usage.cost"
ATTR_CURRENCY = "llm_usage.currency"
ATTR_PRICE_SOURCE = "llm_usage.price_source"
ATTR_DOWNGRADED_FROM = "llm_usage.downgraded_from"
ATTR_STREAM_ABANDONED = "llm_usage.stream.abandoned"

# Baggage keys are the span attribute names, so an upstream service sets them once.
BAGGAGE_KEYS = {
    "function": ATTR_FUNCTION,
    "user": ATTR_USER,
    "session": ATTR_SESSION,
    "anchor": ATTR_ANCHOR,
}

# --- instruments ------------------------------------------------------------
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_REQUESTS = "llm.usage.requests"
METRIC_TOKENS = "llm.usage.tokens"
METRIC_COST = "llm.usage.cost"
METRIC_BUDGET_LIMIT = "llm.budget.limit"
METRIC_BUDGET_USED = "llm.budget.used"
METRIC_BUDGET_UTILIZATION = "llm.budget.utilization"
METRIC_BUDGET_EVENTS = "llm.budget.events"
METRIC_UNPRICED = "llm.pricing.unpriced_requests"
# Observable gauge, unit "d": Prometheus ``llm_pricing_catalog_age_days``.
METRIC_CATALOG_AGE = "llm.pricing.catalog.age"
METRIC_HOURLY_COST = "llm.usage.hourly_cost"
METRIC_INTERNAL_ERRORS = "llm.usage.internal_errors"
# Counter, label ``reason`` (ledger/writer.py DROP_*): Prometheus ``llm_usage_ledger_dropped_records_total``.
METRIC_LEDGER_DROPPED = "llm.usage.ledger.dropped_records"
# Budget counter store (Prometheus: llm_usage_store_degraded_operations_total{store,operation},
# llm_usage_store_up{store}): operations answered locally while the shared store failed, and its state.
METRIC_STORE_DEGRADED_OPS = "llm.usage.store.degraded_operations"
METRIC_STORE_UP = "llm.usage.store.up"
METRIC_BUDGET_ADMISSIONS = "llm.usage.budget.admissions"

# --- metric labels ------------------------------------------------------------
ATTRIBUTION_LABELS = ("provider", "model", "function", "user", "session", "anchor")
UNKNOWN = "unknown"
OVERFLOW = "__overflow__"

TOKEN_TYPES = ("input", "output", "cached_input", "cache_write", "reasoning")

# Operation names (gen_ai.operation.name well-known values)
OP_CHAT = "chat"
OP_TEXT_COMPLETION = "text_completion"
OP_EMBEDDINGS = "embeddings"
OP_GENERATE_CONTENT = "generate_content"
OP_INVOKE_AGENT = "invoke_agent"
