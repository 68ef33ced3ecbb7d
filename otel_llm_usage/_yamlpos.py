# SPDX-License-Identifier: Apache-2.0
"""Where a validation error points in a YAML file: ``file:line: key.path: message``.

Shared by the config loader and the price-catalog loader, so a bad price in a catalog file is
reported the same way as a bad key in the config::

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    line_of(root, ("models", 3, "input"))    # 1-based line of models[3].input (or its nearest parent)
    dotted(("models", 3, "input"))           # "models[3].input"
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["dotted", "duplicate_keys", "line_of"]


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on ``loc`` that exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    line = k.start_mark.line + 1
                    child = v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...] = ()) -> list[tuple[int, str, int]]:
    """(line, dotted key, line of the first occurrence) of every key given twice in one mapping."""
    found: list[tuple[int, str, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for k, v in node.value:
            key = getattr(k, "value", None)
            line = k.start_mark.line + 1
            if isinstance(key, str) and key != "<<":  # merge keys may repeat by design
                if key in first:
                    found.append((line, dotted((*loc, key)), first[key]))
                else:
                    first[key] = line
            found += duplicate_keys(v, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            found += duplicate_keys(child, (*loc, index))
    return found
