"""The user's files: atomic writes (whatever the user made — adapters, stores, run results — is never left
half-written) and reading a text file they named, every failure one line that names it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from vqt.errors import VQTError


def _create_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new, empty temporary file beside the target, created with mode 0o666 minus the umask.

    Not `tempfile.mkstemp`: it creates 0600 files, which would make adapters, configs and store metadata unreadable
    to the group of a shared folder while the `.npy` files beside them are 0644. Letting the kernel apply the umask
    (as a plain `open(path, "w")` does) needs no read of the process-wide umask, which `os.umask` can only do by
    changing it, racing other threads.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name for {directory / name}")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write a file so a crash leaves either the old file or the new one, never part of one.

    The file gets the mode a fresh `open(path, "w")` would give (0o666 minus the umask: 0644 under umask 022,
    0664 under 002), also when it replaces an existing file, whose own mode is not kept: a file written by an older
    version as 0600 is mended on its next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_user_text(path: str | Path, *, what: str = "file", error: type[VQTError] = VQTError,
                   encoding: str = "utf-8", directory_hint: str = "") -> str:
    """The text of a file the user named (`what`: "list file", "configuration file", ...); a missing file, a
    directory, an unreadable file or one that is not UTF-8 text raises `error` in one line naming the file."""
    try:
        return Path(path).read_text(encoding=encoding)
    except FileNotFoundError as failure:
        raise error(f"{path}: {what} not found") from failure
    except IsADirectoryError as failure:
        raise error(f"{path}: {what} is a directory{directory_hint}") from failure
    except UnicodeDecodeError as failure:
        raise error(f"{path}: not a text file (not UTF-8: {failure.reason} at byte {failure.start})") from failure
    except OSError as failure:
        raise error(f"{path}: cannot read {what} ({failure.strerror or failure})") from failure
