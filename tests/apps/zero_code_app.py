# SPDX-License-Identifier: Apache-2.0
"""A plain OpenAI app with no OpenTelemetry code: run under `opentelemetry-instrument`."""

import os
import sys

import openai

from otel_llm_usage import usage_context

client = openai.OpenAI(base_url=os.environ["LOOPBACK_OPENAI_URL"], api_key="sk-zero-code", max_retries=0)

with usage_context(function="zero-code-feature", user="zc-user", anchor="zc-anchor", session="zc-s"):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}])
    for _ in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                           messages=[{"role": "user", "content": "one two three"}]):
        pass
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}])

print("READY", flush=True)
sys.stdin.read()  # keep serving /metrics until the test closes our stdin
