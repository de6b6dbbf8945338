"""Capacity plans over a load curve (``lqs.plan``): servers per window, SLO-aware, verified by simulating the
whole day (docs/model.md, "Capacity plans")."""

from ._load import LoadCurve, load_curve
from ._plan import PLAN_METRICS, PlanResult, Slo, plan

__all__ = ["PLAN_METRICS", "LoadCurve", "PlanResult", "Slo", "load_curve", "plan"]
