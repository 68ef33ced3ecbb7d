# SPDX-License-Identifier: Apache-2.0
"""``python -m otel_llm_usage.cli``."""

from . import main

main()
