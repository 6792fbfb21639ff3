"""OS errors a user can cause are one line and exit 2; a command whose work failed does not exit 0; written files
honour the umask. Everything goes through `vqt.cli.main.main` with tiny inputs, so each test runs in seconds.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, one_error_line
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from vqt.data.synth.writer import generate_task

    root = tmp_path_factory.mktemp("vtab")
    generate_task("dsprites_ori", root, n_train=4, n_val=2, n_test=2, size=32)
    return root


# --- --config ------------------------------------------------------------------------------------------------


def test_config_that_is_a_directory(tmp_path: Path, capsys) -> None:
    assert main(["train", "--config", str(tmp_path), "--task", "dsprites_ori"]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path) in line and "is a directory" in line


def test_config_that_is_missing(tmp_path: Path, capsys) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--task", "dsprites_ori"]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "nope.yaml") in line and "not found" in line


def test_config_that_is_not_yaml(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [3\n")
    assert main(["train", "--config", str(bad), "--task", "dsprites_ori"]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and "not valid YAML" in line
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert main(["train", "--config", str(binary), "--task", "dsprites_ori"]) == 2
    line = one_error_line(capsys)
    assert str(binary) in line and "not a text file" in line


# --- OS errors in the work itself ------------------------------------------------------------------------------


def test_extract_out_below_a_file(data_root: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    rc = main(["extract", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", "--split", "train800",
               "--out", str(blocker / "x"), "--no-progress"])
    assert rc == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "not a directory" in line.lower()


def test_any_os_error_is_one_line_unless_debug(monkeypatch, capsys) -> None:
    """An errno `user_errors` has no hint for, raised by a command: still one line naming the file, exit 2."""
    import vqt.cli.info as info

    def broken(args) -> int:
        raise OSError(errno.EIO, "Input/output error", "/some/where.bin")

    monkeypatch.setattr(info, "run", broken)  # `register` binds it when `main` builds the parser
    assert main(["info", "x"]) == 2
    line = one_error_line(capsys)
    assert "/some/where.bin" in line and "Input/output error" in line
    with pytest.raises(OSError):
        main(["--debug", "info", "x"])


def test_user_errors_converts_every_errno() -> None:
    from vqt.errors import VQTError
    from vqt.rundir import user_errors

    def fails(error: OSError) -> None:
        raise error

    cases = {
        errno.ENOSPC: "no space left on device",
        errno.EACCES: "permission denied",
        errno.ENOTDIR: "not a directory",
        errno.EISDIR: "is a directory",
        errno.EIO: "Input/output error",
    }
    for code, text in cases.items():
        with pytest.raises(VQTError, match=text) as caught:
            user_errors(fails)(OSError(code, os.strerror(code), "/x/y"))
        assert "/x/y" in str(caught.value)


# --- bench memory ----------------------------------------------------------------------------------------------


def test_bench_unknown_backbone_fails_before_measuring(tmp_path: Path, capsys, monkeypatch) -> None:
    import vqt.bench.methods as benchmark

    def never(*args, **kwargs):
        raise AssertionError("measure_all must not run for a backbone that cannot be built")

    monkeypatch.setattr(benchmark, "measure_all", never)
    rc = main(["bench", "memory", "--backbone", "nope@random", "--methods", "linear", "--device", "cpu"])
    assert rc == 2
    assert "unknown timm architecture 'nope'" in one_error_line(capsys)


@pytest.mark.parametrize("failing", [("vqt",), ("linear", "vqt")])
def test_bench_failed_methods_exit_1(tmp_path: Path, capsys, monkeypatch, failing: tuple[str, ...]) -> None:
    import vqt.bench.methods as benchmark

    def fake(methods, *args, **kwargs):
        ok = {"store_trainable": True, "trainable_params": 10, "saved_mib_per_sample": 0.1, "peak_mib": 1.0,
              "step_increase_mib": 0.5, "step_s": 0.01, "timed_steps": 1}
        return [{"method": m, "error": "RuntimeError: boom"} if m in failing else {"method": m, **ok}
                for m in methods]

    monkeypatch.setattr(benchmark, "measure_all", fake)
    out = tmp_path / "table.md"
    rc = main(["bench", "memory", *BACKBONE, "--batch", "2", "--methods", "linear", "vqt", "--device", "cpu",
               "--out", str(out)])
    assert rc == 1
    captured = capsys.readouterr()
    assert "failed: RuntimeError: boom" in captured.out and "failed: RuntimeError: boom" in out.read_text()
    assert f"{len(failing)} of 2 methods failed: {', '.join(failing)}" in captured.err
    assert "Traceback" not in captured.err


# --- file modes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_write_atomic_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    from vqt.io import write_atomic

    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "new.json", b"{}")
        existing = tmp_path / "existing.json"
        existing.write_bytes(b"old")
        existing.chmod(0o600)
        write_atomic(existing, b"{}")  # a replaced file gets the umask's mode too, like a fresh one
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == mode
    assert stat.S_IMODE(existing.stat().st_mode) == mode
    assert (tmp_path / "new.json").read_bytes() == b"{}"
