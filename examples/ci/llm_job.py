# SPDX-License-Identifier: Apache-2.0
"""A CI job that makes LLM calls: no OpenTelemetry code, run under ``opentelemetry-instrument``.

``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` point it at a real endpoint; without them it starts
the package's loopback server (fake OpenAI, 9 tokens a call) so the example runs offline.
``JOB_CALLS`` sets how many calls it makes (default 5). It lives a few seconds: its usage
reaches the Collector because the SDK exports once more when the process exits.
"""

from __future__ import annotations

import contextlib
import os

import openai

from otel_llm_usage import usage_context


def main() -> None:
    calls = int(os.environ.get("JOB_CALLS", "5"))
    with contextlib.ExitStack() as stack:
        base_url = os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            from otel_llm_usage.testing import LoopbackLLMServer

            base_url = stack.enter_context(LoopbackLLMServer()).openai_base_url
        client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-offline"),
                               max_retries=0)
        with usage_context(function="ci-eval", session=os.environ.get("CI_JOB_ID", "local")):
            for _ in range(calls):
                client.chat.completions.create(model=os.environ.get("JOB_MODEL", "gpt-4o-mini"), max_tokens=5,
                                               messages=[{"role": "user", "content": "one two three four"}])
    print(f"llm_job: {calls} calls done", flush=True)


if __name__ == "__main__":
    main()
