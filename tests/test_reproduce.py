"""`lqs reproduce paper --quick` end to end (about 2 minutes on 2 cores: marked slow)."""

import os

import pandas as pd
import pytest
from click.testing import CliRunner

from lqs.cli import main


@pytest.mark.slow
def test_reproduce_paper_quick(tmp_path):
    out = tmp_path / "paper"
    r = CliRunner().invoke(main, ["reproduce", "paper", "--quick", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    for f in ("report.md", "table1.csv", "table2.csv", "table3.csv", "table4.csv", "fig2_waiting_one_server.png",
              "fig4_waiting_eight_servers.png", "fig6_wait_cdf.png", "config.json"):
        assert os.path.getsize(out / f) > 0, f
    t1 = pd.read_csv(out / "table1.csv")
    assert list(t1.mu_theory_paper_rps.round(3)) == [3.263, 3.956, 2.902]
    # simulated critical rate inside the theory band [μ_exact(1−δ), μ_exact] for every regime
    assert ((t1.lam_star_sim_rps >= t1.mu_stable_rps - 0.01) & (t1.lam_star_sim_rps <= t1.mu_exact_rps + 0.01)).all()
    t3 = pd.read_csv(out / "table3.csv")
    assert abs(t3.lam_star_sim_rps[0] / t3.mu_theory_rps[0] - 1) < 0.03  # μ of the 8-server deployment
    assert t1.reliable.all() and t3.reliable.all()
    assert "trials per critical-rate estimate" in (out / "report.md").read_text()
