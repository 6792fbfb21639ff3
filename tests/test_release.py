"""Release: the distribution name, the version from one place, `vqt --version`, the console script, and the
clash with PyPI's unrelated `vqt` (another distribution that installs a top-level `vqt` package) detected with a
clear message. Fake distributions are metadata folders in a temporary site folder put on the path of a child
Python, so nothing here installs or uninstalls anything."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import _vqt_launcher
import vqt
from vqt.checkpoint.files import library_version
from vqt.cli.main import main


def launcher_alone(tmp_path: Path) -> Path:
    """A folder holding only a copy of the launcher (its own folder, src/ or site-packages, also holds `vqt`)."""
    folder = tmp_path / "launcher"
    folder.mkdir()
    (folder / "_vqt_launcher.py").write_text(Path(_vqt_launcher.__file__).read_text())
    return folder


def python(code: str, *path: Path | str, isolated: bool = False,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a child Python with `path` first on sys.path (`isolated`: no site-packages at all)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if path:
        env["PYTHONPATH"] = os.pathsep.join(map(str, path))
    flags = ["-S"] if isolated else []
    return subprocess.run([sys.executable, *flags, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def fake_distribution(site: Path, folder: str, *, name: str, version: str, summary: str = "",
                      top_level: str | None = "vqt\n", record: str | None = None) -> Path:
    info = site / folder
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + (f"Summary: {summary}\n" if summary else "") + "\nA description.\n")
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level)
    if record is not None:
        (info / "RECORD").write_text(record)
    return info


# ---------------------------------------------------------------- name and version


def test_distribution_name_and_version_come_from_the_installed_metadata() -> None:
    assert vqt.DISTRIBUTION == "visual-query-tuning"
    installed = importlib.metadata.version(vqt.DISTRIBUTION)
    assert vqt.__version__ == installed == library_version()
    assert "__version__" in dir(vqt) and "__version__" not in vqt.__all__
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'\nname = "{vqt.DISTRIBUTION}"' in pyproject and f'\nversion = "{installed}"\n' in pyproject


def test_version_of_a_source_tree_that_was_never_installed(monkeypatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert vqt._installed_version() == vqt.UNKNOWN_VERSION == "0+unknown"


def test_cli_version_is_quick_and_matches(capsys) -> None:
    for argv in (["--version"], ["--log-level", "WARNING", "--version"]):
        assert main(argv) == 0
        expected = f"vqt {vqt.__version__} (visual-query-tuning, Python {sys.version.split()[0]})\n"
        assert capsys.readouterr().out == expected
    with pytest.raises(SystemExit):  # argparse lists it in --help
        main(["--help"])
    assert "--version" in capsys.readouterr().out
    # Answered before the commands (and so torch) are imported.
    code = ("import sys; from vqt.cli.main import main; assert main(['--version']) == 0; "
            "assert 'torch' not in sys.modules")
    assert python(code).returncode == 0


def test_console_script_is_the_launcher() -> None:
    scripts = importlib.metadata.distribution(vqt.DISTRIBUTION).entry_points.select(group="console_scripts")
    assert [(s.name, s.value) for s in scripts] == [("vqt", "_vqt_launcher:main")]
    assert _vqt_launcher.foreign_vqt() is None
    assert _vqt_launcher.MARKER in Path(vqt.__file__).read_text()


def test_install_hints_name_the_distribution() -> None:
    from vqt.backbone.offline import INSTALL_HINT
    from vqt.report.tensorboard import INSTALL

    assert INSTALL_HINT == "pip install 'visual-query-tuning[offline]'"
    assert INSTALL == "pip install 'visual-query-tuning[tensorboard]'"


# ---------------------------------------------------------------- the clash with another `vqt`


@pytest.mark.parametrize("declared", ["top_level.txt", "RECORD"])
def test_import_fails_clearly_when_another_distribution_provides_vqt(tmp_path: Path, declared: str) -> None:
    # This library's `vqt` wins the import, but another distribution says it installs `vqt` too (its files may
    # have been overwritten by ours, or lie later on sys.path): whichever way, uninstalling either breaks the other.
    fake_distribution(tmp_path, "fake_vqt-1.0.dist-info", name="fake-vqt", version="1.0",
                      summary="Variable Q-Transform with PyTorch backend",
                      top_level="vqt\n" if declared == "top_level.txt" else None,
                      record=None if declared == "top_level.txt" else
                      "vqt/__init__.py,sha256=abc,198\nvqt/helpers.py,sha256=def,14457\nfake_vqt-1.0.dist-info/RECORD,,\n")
    result = python("import vqt", tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vqt.DistributionClash: the import name 'vqt' is also installed by another distribution: "
                           f"fake-vqt 1.0 (Variable Q-Transform with PyTorch backend) at {tmp_path}")
    assert "pip uninstall fake-vqt, then pip install --force-reinstall --no-deps visual-query-tuning" in last
    # The command says the same in one line, no traceback.
    result = python("import sys, _vqt_launcher; sys.argv = ['vqt', '--version']; sys.exit(_vqt_launcher.main())",
                    tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("vqt: error: the import name 'vqt' is also installed by another distribution: "
                                    "fake-vqt 1.0")


def test_what_is_not_a_clash(tmp_path: Path) -> None:
    # This library under its pre-release name `vqt` (an old editable install, a stale src/vqt.egg-info), a
    # distribution whose top-level names merely start with vqt, and one whose RECORD names vqt only deeper.
    fake_distribution(tmp_path, "vqt-0.0.9.dist-info", name="vqt", version="0.0.9",
                      summary="Visual Query Tuning (Tu, Mai, Chao, CVPR 2023) for timm Vision Transformers")
    fake_distribution(tmp_path, "vqtools-2.0.dist-info", name="vqtools", version="2.0",
                      top_level="vqtools\nvqt_extra\n")
    fake_distribution(tmp_path, "other-1.0.dist-info", name="other", version="1.0", top_level=None,
                      record="other/vqt/__init__.py,sha256=abc,1\nvqtx.py,sha256=abc,1\n")
    fake_distribution(tmp_path, "visual_query_tuning-9.9.dist-info", name="visual-query-tuning", version="9.9")
    result = python("import vqt; print(vqt.other_vqt_distributions())", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_command_when_another_vqt_package_wins(tmp_path: Path) -> None:
    # PyPI's `vqt` installed after this library (its __init__.py replaced ours) or earlier on sys.path: `import vqt`
    # runs its code, so only the launcher, outside the package, can tell. It reads, never runs, the other package.
    (tmp_path / "vqt").mkdir()
    (tmp_path / "vqt" / "__init__.py").write_text("raise SystemExit('the other vqt was executed')\n")
    fake_distribution(tmp_path, "vqt-0.1.3.dist-info", name="vqt", version="0.1.3",
                      summary="Variable Q-Transform with PyTorch backend")
    result = python("import sys, _vqt_launcher; sys.argv = ['vqt', 'info', 'x']; sys.exit(_vqt_launcher.main())",
                    tmp_path, launcher_alone(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"vqt: error: the 'vqt' package Python imports ({tmp_path / 'vqt' / '__init__.py'}) is not Visual Query "
        "Tuning's but another project's (installed by vqt): PyPI's `vqt` is an unrelated library with the same import "
        f"name. Fix: {_vqt_launcher.FIX}\n")


def test_the_command_when_uninstalling_the_other_vqt_took_our_init(tmp_path: Path) -> None:
    # Ours was installed last, over the other's __init__.py; `pip uninstall vqt` then removes the file it recorded.
    (tmp_path / "vqt" / "cli").mkdir(parents=True)
    result = python("import sys, _vqt_launcher; sys.exit(_vqt_launcher.main())", tmp_path, launcher_alone(tmp_path),
                    isolated=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"vqt: error: the 'vqt' package at {tmp_path / 'vqt'} has no __init__.py")
    assert result.stderr.rstrip().endswith("reinstall: pip install --force-reinstall --no-deps visual-query-tuning")


def test_the_command_when_no_vqt_is_installed(tmp_path: Path) -> None:
    result = python("import sys, _vqt_launcher; sys.exit(_vqt_launcher.main())", launcher_alone(tmp_path),
                    isolated=True)
    assert result.returncode == 2
    assert result.stderr.startswith("vqt: error: no 'vqt' package is installed for this Python")


def test_the_launcher_runs_the_cli(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["vqt", "--version"])
    assert _vqt_launcher.main() == 0
    assert capsys.readouterr().out.startswith(f"vqt {vqt.__version__} ")
