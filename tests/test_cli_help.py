"""The `cascade` CLI's help, `--version` and `cascade list`: choices come from the registries, every
option of tune/study/compare has a help text, and `cascade --help` imports no registry."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from importlib import metadata

import pytest

from jobs import cli


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _subparser(name):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_version_is_the_installed_distribution():
    code, out, _ = _run(["--version"])
    assert code == 0
    assert out.strip() == f"cascade {metadata.version('cascade-eval')}"


def test_top_level_help_imports_no_registry():
    code = ("import sys, contextlib, io\nfrom jobs import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: cli.main(['--help'])\n    except SystemExit: pass\n"
            "heavy = [m for m in ('cascade.tuners', 'cascade.data.benchmarks', 'cascade.scoring.signals',"
            " 'cascade.data.records', 'pandas', 'numpy', 'mlflow', 'ray') if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind,registry", [("methods", "cascade.tuners:METHODS"),
                                           ("benchmarks", "cascade.data.benchmarks:BENCHMARKS"),
                                           ("signals", "cascade.scoring.signals:SIGNALS")])
def test_list_prints_every_registered_name(kind, registry):
    import importlib

    mod, attr = registry.split(":")
    names = list(getattr(importlib.import_module(mod), attr))
    code, out, _ = _run(["list", kind, "--names"])
    assert code == 0 and out.split() == names
    code, out, _ = _run(["list", kind])
    assert code == 0
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == names
    assert all(len(ln.split()) > 1 for ln in lines)  # a description on every line


def test_list_refuses_an_unknown_kind():
    code, _, err = _run(["list", "tuners"])
    assert code == 2 and "invalid choice" in err


def test_tune_help_lists_methods_benchmarks_and_signal_columns():
    from cascade.data.benchmarks import BENCHMARKS
    from cascade.scoring.signals import SIGNALS
    from cascade.tuners import METHODS

    text = " ".join(_subparser("tune").format_help().split())
    for name in METHODS:
        assert name in text
    for name in BENCHMARKS:
        assert name in text
    for sig in SIGNALS.values():
        assert sig.column in text


@pytest.mark.parametrize("command", ["tune", "study", "compare"])
def test_every_option_has_help(command):
    p = _subparser(command)
    missing = [a.option_strings or a.dest for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help and str(a.help).strip())]
    assert missing == []
    text = p.format_help()
    assert "%%" not in text and "issue 4" not in text and "%(" not in text


def test_study_top_level_help_has_no_issue_reference():
    code, out, _ = _run(["--help"])
    assert code == 0 and "issue 4" not in out and "list" in out


def test_an_uncaught_tracking_failure_is_one_line_and_exit_3(monkeypatch, capsys):
    """A command that lets tracking.TrackingUnavailable escape still ends with the one line and exit 3;
    any other RuntimeError is not swallowed."""
    from jobs import cli
    from tracking.store import TrackingUnavailable

    def boom(args):
        raise TrackingUnavailable("the store at sqlite:///x.db is read-only")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["list"].set_defaults(func=boom)
    assert cli.main(["list", "methods"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cascade list: tracking failed: the store at sqlite:///x.db is read-only"]

    def other(args):
        raise RuntimeError("not tracking")

    sub.choices["list"].set_defaults(func=other)
    with pytest.raises(RuntimeError, match="not tracking"):
        cli.main(["list", "methods"])
