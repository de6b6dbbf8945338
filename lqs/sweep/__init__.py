"""Resumable parameter sweeps (``lqs.sweep``): the spec (:mod:`.spec`), its plan of groups and parts
(:mod:`.plan`), running the parts on one or several hosts (:mod:`.run`) and the files of a sweep directory
(:mod:`.io`). The model is docs/model.md."""

from .io import load_sweep
from .run import SweepInfo, run_sweep, sweep
from .spec import SweepSpec

__all__ = ["SweepInfo", "SweepSpec", "load_sweep", "run_sweep", "sweep"]
