# SPDX-License-Identifier: Apache-2.0
"""Benchmark suite of otel-llm-usage: ``python -m benchmarks [--quick] [--out DIR]``.

See ``benchmarks/README.md`` for what is measured and how to read the results.
"""
