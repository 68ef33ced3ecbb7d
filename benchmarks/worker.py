# SPDX-License-Identifier: Apache-2.0
"""One variant in one process, driven over stdin/stdout by :mod:`benchmarks.overhead`.

    python -m benchmarks.worker VARIANT [--redis-url URL] [--loopback-url URL]

Protocol: one JSON object per line. Requests on stdin: ``{"op": "run",
"surface": S, "n": N}`` or ``{"op": "quit"}``. Replies on stdout are prefixed
with :data:`TAG` so anything an instrumentation prints is ignored:
``{"ok": true, "ns": [...]}`` or ``{"ok": false, "error": "..."}``. The first
reply (after set-up) carries facts about the variant (what the pipeline holds).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["TAG", "main"]

TAG = "@@bench "


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(TAG + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("variant")
    parser.add_argument("--redis-url")
    parser.add_argument("--loopback-url")
    args = parser.parse_args(argv)

    from .surfaces import Surfaces
    from .variants import runtime_facts, setup_variant, use_peer_path

    use_peer_path()
    try:
        teardown, facts = setup_variant(args.variant, args.redis_url)
    except Exception as exc:  # reported as "unavailable" by the parent
        _reply({"ok": False, "error": f"set-up failed: {type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()})
        return 1
    surfaces = Surfaces(args.loopback_url)
    _reply({"ok": True, "facts": facts})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            # Collect between rounds, not inside one: a full collection would land on one variant only.
            gc.collect()
            ns = surfaces.run(request["surface"], int(request["n"]))
            _reply({"ok": True, "ns": ns})
        except Exception as exc:  # one broken surface must not end the run
            _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
    # How the counter store fared over the whole run (a shared ledger that degraded measured the fallback).
    after = runtime_facts() if args.variant.startswith("ours") else {}
    surfaces.close()
    teardown()
    _reply({"ok": True, "bye": True, "facts": after})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
