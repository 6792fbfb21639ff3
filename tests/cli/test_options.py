"""Command options (cli/options.py): list options written with commas and/or spaces, their help and errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.helpers import sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _sweep_config(*argv: str, config: Path | None = None) -> dict:
    from vqt.cli import sweep
    from vqt.cli.main import build_parser
    from vqt.cli.options import resolve

    extra = ["--config", str(config)] if config is not None else []
    return resolve(build_parser().parse_args(["sweep", *extra, *argv]), sweep.OPTIONS)


def test_list_options_take_commas_and_spaces(tmp_path: Path) -> None:
    expected = {"lrs": [0.5, 0.1], "wds": [0.01, 0.0], "tasks": "dsprites_ori,clevr_count",
                "queries": {"svhn": 20, "dtd": 1}}
    for argv in (
        ["--lrs", "0.5,0.1", "--wds", "0.01,0", "--tasks", "dsprites_ori,clevr_count", "--queries", "svhn=20,dtd=1"],
        ["--lrs", "0.5", "0.1", "--wds", "0.01", "0", "--tasks", "dsprites_ori", "clevr_count", "--queries",
         "svhn=20", "dtd=1"],
        ["--lrs", "0.5,", "0.1", "--wds", "0.01 0", "--tasks", "dsprites_ori,", "clevr_count", "--queries",
         "svhn=20,", "dtd=1"],
    ):
        config = _sweep_config(*argv)
        assert {key: config[key] for key in expected} == expected, argv
    assert _sweep_config("--queries", "10")["queries"] == 10
    assert _sweep_config("--lrs", "0.5")["lrs"] == [0.5]

    # The YAML layer still works (a list, a comma or space separated string), and the command line wins.
    for text in ("lrs: [0.5, 0.1]\n", "lrs: 0.5,0.1\n", "lrs: 0.5 0.1\n"):
        (tmp_path / "c.yaml").write_text(text)
        assert _sweep_config(config=tmp_path / "c.yaml")["lrs"] == [0.5, 0.1], text
    assert _sweep_config("--lrs", "1", "0.25", config=tmp_path / "c.yaml")["lrs"] == [1.0, 0.25]


def test_list_option_help_and_errors(capsys) -> None:
    from vqt.cli.main import build_parser

    parser = build_parser()
    sweep = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["sweep"]
    helps = {flag: action.help for action in sweep._actions for flag in action.option_strings}
    for flag in ("--lrs", "--wds", "--tasks", "--queries"):
        assert "several values separated by commas and/or spaces" in helps[flag], flag
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--help"])
    assert "separated by commas and/or spaces" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--lrs", "0.5", "abc"])
    assert "argument --lrs: expected numbers separated by commas" in capsys.readouterr().err


def test_space_separated_grid_on_the_command_line(shapes_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "spaces"
    args = sweep_args(shapes_root, out)
    args[args.index("--lrs") + 1: args.index("--lrs") + 2] = ["1.0", "0.1"]
    args[args.index("--wds") + 1: args.index("--wds") + 2] = ["0.001", "0"]
    assert main(args) == 0
    assert len(list((out / "tasks" / "dsprites_ori" / "grid").glob("*/result.json"))) == 4
    capsys.readouterr()
    # The same run as the comma spelling: rerun that way, it is this finished run.
    assert main(sweep_args(shapes_root, out)) == 0
    assert "already holds this finished sweep run" in capsys.readouterr().out
