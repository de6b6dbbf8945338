"""Replay and calibration on measured benchmark runs (docs/model.md, "Replaying a benchmark" and
"Calibrating the batch time")."""

from ._arrivals import Arrivals
from ._calibrate import CalibrationResult, calibrate, default_fit
from ._replay import ReplayResult, measured_metrics, queue_grew, replay, run_arrivals
from ._sources import resolve_server

__all__ = ["Arrivals", "CalibrationResult", "calibrate", "default_fit", "ReplayResult", "measured_metrics", "queue_grew", "replay", "resolve_server",
           "run_arrivals"]
