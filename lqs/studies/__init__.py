"""Studies: the questions a capacity planner asks, each answered by simulation next to the closed form.

Every study is a function ``study(workload=None, server=None, mc=None, *, quick=False, seed=0, out=None,
progress=False, <its options>)`` returning a :class:`StudyResult` (a tidy DataFrame, the PNG path and a dict of
headline numbers; ``df, png = study(...)`` unpacks the first two). Each computes its table and headline numbers
(``lqs/studies/<study>.py``), draws them in a separate plot function (:mod:`lqs.studies.plots`) and writes
``DIR/<name>.csv``, ``DIR/<name>.json`` and ``DIR/<name>.png`` when given ``out=DIR`` (:mod:`lqs.studies.common`).
``server=None`` is :func:`default_server` and ``mc=None`` :func:`default_mc`: full size (paper scale: M = 131,000,
ŝ = 512, b̄ = 0.0372 s, meant for an accelerator) or, with ``quick``, smaller M and requests and fewer trials and
steps (minutes on a laptop CPU). Utilisation is ρ = λ/μ with μ the closed-form rate of the whole
deployment (docs/model.md).

1. :func:`phase_diagram` — the long-run stability boundary λ*(x) along a design axis, with μ and μ(1−δ) beside it.
2. :func:`b_error` — how an error in b̄ moves μ; which estimator of b̄ predicts λ* for random and affine batch times.
3. :func:`delta_study` — where λ* falls in [μ_exact(1−δ), μ_exact] as the largest request grows against M.
4. :func:`mixture_study` — a piecewise-stationary schedule of workloads against μ_mix with count or time weights.
5. :func:`cluster_study` — G servers and the routing rule: λ* and waiting-time percentiles.
6. :func:`latency_study` / :func:`slo_servers` — latency against utilisation ρ = λ/μ; servers for a p99 TTFT target
   (``slo_replicas`` is its old name).
7. :func:`reproduce_paper` — the paper's Tables 1–4 and Figures 2, 4 and 6 in simulation.

Units: tokens, seconds, requests per second (docs/model.md).
"""

from .b_error import b_error, default_affine, default_b_models
from .cluster import cluster_study
from .common import StudyResult, default_mc, default_server
from .delta import delta_study
from .latency import latency_study
from .mixture import mixture_study
from .phase import phase_diagram
from .reproduce import reproduce_paper
from .slo import slo_replicas, slo_servers

__all__ = ["StudyResult", "b_error", "cluster_study", "default_affine", "default_b_models", "default_mc",
           "default_server", "delta_study", "latency_study", "mixture_study", "phase_diagram", "reproduce_paper",
           "slo_replicas", "slo_servers"]
