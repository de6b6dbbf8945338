"""JSON of results: numpy scalars and arrays and pandas tables as plain JSON values."""

from __future__ import annotations

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
