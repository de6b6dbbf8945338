"""``lqs reproduce paper``: the paper's tables and figures in simulation (:func:`lqs.studies.reproduce_paper`)."""

from __future__ import annotations

import click

from .options import parse_int, renamed_options


@click.group("reproduce")
def reproduce_group():
    """Regenerate published results in simulation."""


@reproduce_group.command("paper")
@click.option("--out", "out_dir", default="lqs-paper", show_default=True, metavar="DIR",
              help="Folder for report.md, the tables' CSVs and the figures.")
@click.option("--quick", is_flag=True, help="Few trials: a few minutes on a 2-core CPU (full mode is for a GPU).")
@click.option("--seed", default="0", show_default=True, metavar="INT", help="Seed of the PRNG key.")
@click.option("--progress/--no-progress", default=True, help="Print each table's headline as it is computed.")
@renamed_options("replicas")
def reproduce_paper_cmd(out_dir, quick, seed, progress):
    """Tables 1–4 and Figures 2, 4, 6 of Nie, Si & Zhou (arXiv 2605.04595): report.md, CSVs and PNGs in DIR."""
    from ..studies import reproduce_paper
    from . import cli_path

    res = reproduce_paper(out_dir, quick=quick, seed=parse_int("seed", seed, 0, 2**63 - 1), progress=progress,
                          path=cli_path())
    click.echo(f"wrote {res['report']} ({res['wall_s']:.0f} s)")
