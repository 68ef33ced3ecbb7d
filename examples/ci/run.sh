#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# One CI step: run the LLM job with its usage pushed over OTLP, then fail the job if a budget
# is exceeded (`otel-llm-usage budget status` exits 2 then). Any CI system: it is plain sh.
#
#   OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318 examples/ci/run.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)

: "${OTEL_SERVICE_NAME:=ci-llm-job}"
: "${OTEL_LLM_USAGE_CONFIG:=$here/otel-llm-usage.yaml}"
: "${LLM_USAGE_DIR:=$PWD/.llm-usage}"
: "${OTEL_LLM_USAGE_LEDGER:=sqlite://$LLM_USAGE_DIR/ledger.db}"     # sqlite:///abs/path
: "${OTEL_METRICS_EXPORTER:=otlp}"                                  # push: the job ends before any scrape
: "${OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE:=cumulative}" # what Prometheus needs downstream
export OTEL_SERVICE_NAME OTEL_LLM_USAGE_CONFIG OTEL_LLM_USAGE_LEDGER OTEL_METRICS_EXPORTER \
       OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
mkdir -p "$LLM_USAGE_DIR"

# Step 1: the job. Its metrics are exported when it exits (and on SIGTERM, e.g. a cancelled job).
opentelemetry-instrument python "$here/llm_job.py"

# Step 2: the gate. Exit code 2 when any budget is exceeded fails the job; the table goes to the log.
otel-llm-usage budget status --config "$OTEL_LLM_USAGE_CONFIG"
