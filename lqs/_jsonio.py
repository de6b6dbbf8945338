"""JSON of results, one policy everywhere: numpy scalars and arrays and pandas tables become plain JSON values,
and a missing number (NaN, ±inf) is written as ``null`` (bare ``NaN`` is not JSON)."""

from __future__ import annotations

import json
import math

import numpy as np


def json_default(o):
    """``default=`` for ``json.dump``: numpy integers/floats → int/float, arrays → lists, DataFrames → records,
    anything else → its str()."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    try:
        import pandas as pd

        if isinstance(o, pd.DataFrame):
            return o.to_dict(orient="records")
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def clean(o):
    """``o`` with every non-finite float replaced by None (recursively through dicts, lists and tuples)."""
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return clean(o.tolist())
    try:
        import pandas as pd

        if isinstance(o, pd.DataFrame):
            return clean(o.to_dict(orient="records"))
    except ImportError:  # pragma: no cover
        pass
    return o


def dumps(obj, **kw) -> str:
    """Strict JSON text (NaN/inf → null; never bare NaN)."""
    return json.dumps(clean(obj), default=json_default, allow_nan=False, **kw)


def dump(obj, fh, **kw) -> None:
    """Write strict JSON (NaN/inf → null) to an open text file."""
    fh.write(dumps(obj, **kw))


def describe(obj):
    """A readable, JSON-able description of a workload or batch model: its class and fields, recursively;
    arrays of more than 16 numbers are summarised (n, min, mean, max)."""
    import dataclasses

    if isinstance(obj, (list, tuple)):
        return [describe(x) for x in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = describe(getattr(obj, f.name))
        if hasattr(obj, "max_total"):
            out["max_total_tokens"] = int(obj.max_total)
        return out
    if isinstance(obj, np.generic) or hasattr(obj, "__array__"):
        x = np.asarray(obj)
        if x.size <= 16:
            return x.tolist()
        return {"n": int(x.size), "min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}
    return obj
