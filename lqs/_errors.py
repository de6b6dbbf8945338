"""One error type for every bad input: it names the parameter, the bad value and what is allowed."""

from __future__ import annotations

import math
from typing import Any


class LqsError(ValueError):
    """Invalid input to lqs. ``param`` names the parameter, ``value`` the bad value, ``allowed`` the range."""

    def __init__(self, param: str, value: Any, allowed: str, detail: str | None = None):
        self.param = param
        self.value = value
        self.allowed = allowed
        msg = f"{param}={value!r} is invalid: {allowed}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


def parse_number(param: str, x):
    """A number from a number or its text ('1e-3', '131_000', '1.31e5'): int if written as one, else float.
    numpy scalars become Python numbers; bool, None and non-numeric text raise an LqsError naming ``param``."""
    import numpy as np

    if isinstance(x, (bool, np.bool_)) or x is None:
        raise LqsError(param, x, "must be a number")
    if isinstance(x, (int, float, np.integer, np.floating)):
        return x.item() if isinstance(x, np.generic) else x
    txt = str(x).strip().replace("_", "")
    try:
        return int(txt)
    except ValueError:
        pass
    try:
        return float(txt)
    except ValueError:
        raise LqsError(param, x, "must be a number") from None


def _is_int(x) -> bool:
    try:
        import numpy as np

        if isinstance(x, (bool, np.bool_)):
            return False
        if isinstance(x, (int, np.integer)):
            return True
        if isinstance(x, (float, np.floating)) and math.isfinite(x) and float(x).is_integer():
            return True
    except Exception:  # pragma: no cover
        pass
    return False


def check_int(param: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """Validate an integer parameter in [lo, hi] and return it as a Python int."""
    rng = _range_text(lo, hi, "an integer")
    if not _is_int(value):
        raise LqsError(param, value, f"must be {rng}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise LqsError(param, value, f"must be {rng}")
    return v


def check_float(param: str, value, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """Validate a finite real parameter in a (half-)open or closed interval."""
    if hi is None and lo is not None:
        rng = f"a finite number {'>' if lo_open else '≥'} {lo:g}"
    elif lo is None and hi is not None:
        rng = f"a finite number {'<' if hi_open else '≤'} {hi:g}"
    elif lo is None:
        rng = "a finite number"
    else:
        rng = f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LqsError(param, value, f"must be {rng}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise LqsError(param, value, f"must be {rng}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise LqsError(param, value, f"must be {rng}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise LqsError(param, value, f"must be {rng}")
    return v


def check_choice(param: str, value, choices) -> str:
    if value not in choices:
        raise LqsError(param, value, "must be one of " + ", ".join(map(str, choices)))
    return value


def _range_text(lo, hi, what):
    if lo is not None and hi is not None:
        return f"{what} in [{lo}, {hi}]"
    if lo is not None:
        return f"{what} ≥ {lo}"
    if hi is not None:
        return f"{what} ≤ {hi}"
    return what
