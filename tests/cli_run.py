"""Invoke the ``lqs`` command line in-process (shared by the CLI tests)."""

import json

from click.testing import CliRunner

from lqs.cli import main


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def run_json(args):
    r = run(args + ["--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def one_line_error(r, *words):
    """A bad input: exit status 2, nothing on stdout, one line ``error: …`` on stderr naming every word."""
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ")
    for w in words:
        assert w in line, (w, line)
