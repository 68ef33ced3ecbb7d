# SPDX-License-Identifier: Apache-2.0
"""Run one micro-benchmark module in a fresh interpreter and read back its JSON result.

A fresh process per benchmark keeps RSS readings honest (nothing left over from
the SDKs or earlier benchmarks) and keeps runtimes built for one benchmark out
of the next. Each module's ``main`` prints its result as one :data:`TAG` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["TAG", "emit", "run_module"]

TAG = "@@bench-result "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` as the one line :func:`run_module` reads."""
    sys.stdout.write(TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_module(module: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """``python -m module *args``; its result, or ``{"error": ...}`` if it failed or timed out."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            result: dict[str, Any] = json.loads(line[len(TAG):])
            return result
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
