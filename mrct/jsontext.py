"""JSON read from files a user may hand over (markups, manifests, model packages): every failure
to parse is a ValueError, which each reader turns into its one-line error naming the file.

``json.loads`` raises RecursionError for arrays nested deeper than Python's recursion limit
(``[[[[...]]]]``); that escaped every ``except ValueError`` as "unexpected RecursionError",
exit 70. (An integer of over 4300 digits is already a ValueError.)
"""

from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads``, raising only ValueError (json.JSONDecodeError is one) on bad input."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
