# SPDX-License-Identifier: Apache-2.0
"""Token amounts as people write them: ``350000``, ``350,000``, ``350 000``, ``350K``, ``1.2M``, ``35万``.

    parse_amount("1.2M")    # 1_200_000
    parse_amount("35万")    # 350_000
    parse_amount("1.5亿")   # 150_000_000
    parse_amount("35萬")    # AmountError: traditional 萬 is not accepted; write 35万 or 350000

Accepted, and why:

* ASCII digits, optionally grouped in threes by ``,``, ``_``, a space or a no-break space
  (one kind of separator per number). Strict grouping is deliberate: ``1,5M`` (a European
  decimal comma) or ``35,00`` must fail rather than silently become 15M or 3500.
* One optional ``.`` fraction, only together with a unit, and the result must be whole:
  ``1.2M`` is 1,200,000 but ``1.2345K`` (1234.5 tokens) is refused.
* Units (case-insensitive): ``K`` 10^3, ``M`` 10^6, ``B``/``G`` 10^9, ``千`` 10^3, ``万`` 10^4,
  ``亿`` 10^8. ``亿`` is accepted: it is the unit Chinese billing dashboards use for large
  totals and it is unambiguous. Traditional ``萬``/``億`` are refused with a hint, so a
  mis-typed character never passes unnoticed.
* Not accepted: signs, exponents (``1e6``; ``1e400`` would overflow), words, empty input,
  more than :data:`MAX_AMOUNT` tokens.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["MAX_AMOUNT", "UNITS", "AmountError", "parse_amount"]

# Far above any real counter (a quadrillion tokens), low enough that a typo is caught.
MAX_AMOUNT = 10**15

UNITS: dict[str, int] = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "千": 10**3, "万": 10**4, "亿": 10**8}
_TRADITIONAL = {"萬": "万", "億": "亿"}
_SEPARATORS = (",", "_", " ", "\u00a0", "\u202f")
_NUMBER = re.compile(r"^(?P<int>[0-9][0-9,_ \u00a0\u202f]*)(?:\.(?P<frac>[0-9]+))?\s*(?P<unit>\S*)$")
_HINT = "use digits with an optional unit, e.g. 350000, 350,000, 350K, 1.2M, 35万, 1.5亿"


class AmountError(ValueError):
    """The text is not a token amount; the message says why and what would work."""


def _integer_part(text: str, original: str) -> str:
    seps = {c for c in text if c in _SEPARATORS}
    if not seps:
        return text
    if len(seps) > 1:
        raise AmountError(f"{original!r}: mixes digit separators {sorted(seps)}; {_HINT}")
    groups = text.split(seps.pop())
    if not (1 <= len(groups[0]) <= 3) or any(len(g) != 3 for g in groups[1:]):
        raise AmountError(f"{original!r}: digit groups must be of three (350,000); {_HINT}")
    return "".join(groups)


def parse_amount(text: str) -> int:
    """The number of tokens ``text`` denotes; raises :class:`AmountError` with a reason."""
    original = text
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        raise AmountError(f"empty amount; {_HINT}")
    if text[0] in "+-":
        raise AmountError(f"{original!r}: token amounts cannot be signed; {_HINT}")
    match = _NUMBER.match(text)
    if match is None:
        raise AmountError(f"{original!r} is not a token amount; {_HINT}")
    unit_text = match["unit"]
    if unit_text in _TRADITIONAL:
        raise AmountError(f"{original!r}: traditional {unit_text} is not accepted; write "
                          f"{text.replace(unit_text, _TRADITIONAL[unit_text])} instead")
    unit = UNITS.get(unit_text.lower()) if unit_text else 1
    if unit is None and re.fullmatch(r"[eE][+-]?[0-9]+", unit_text):
        raise AmountError(f"{original!r}: exponents are not accepted; {_HINT}")
    if unit is None:
        raise AmountError(f"{original!r}: unknown unit {unit_text!r}; {_HINT}")
    digits = _integer_part(match["int"].rstrip(), original)
    if match["frac"] is not None and unit == 1:
        raise AmountError(f"{original!r}: a token count is a whole number")
    try:
        value = Decimal(f"{digits}.{match['frac'] or '0'}") * unit
    except InvalidOperation:
        raise AmountError(f"{original!r} is not a token amount; {_HINT}") from None
    if value != value.to_integral_value():
        raise AmountError(f"{original!r} is {value.normalize():f} tokens, not a whole number")
    if value > MAX_AMOUNT:
        raise AmountError(f"{original!r} is more than {MAX_AMOUNT:,} tokens; is it a typo?")
    return int(value)
