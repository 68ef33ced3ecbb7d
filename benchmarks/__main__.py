# SPDX-License-Identifier: Apache-2.0
"""``python -m benchmarks [--quick] [--out DIR]``: run the whole suite, write JSON + Markdown."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
