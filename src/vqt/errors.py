"""User-facing errors: one clear message, no traceback at the command line (see `vqt --debug`)."""

import errno


class VQTError(Exception):
    """Base of every error caused by user input (files, names, settings), not by a bug."""


class BackboneError(VQTError):
    """A backbone that cannot be created, or whose blocks the query path cannot honour exactly."""


class AdapterError(VQTError):
    """An adapter file that is corrupt or does not fit the backbone it is loaded onto."""


class DataError(VQTError):
    """A dataset problem: missing or corrupt image, bad list line, label out of range, ..."""


class StoreError(VQTError):
    """A feature store that is incomplete, corrupt, or was made for another request."""


def os_error_message(error: OSError) -> str:
    """One line for an OS error, naming the file(s); hints where the user's fix is not obvious."""
    names = [str(name) for name in (error.filename, getattr(error, "filename2", None)) if name is not None]
    where = " -> ".join(names)
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.ENOSPC:
        return (f"no space left on device{f' ({where})' if where else ''}; free some space or point --out/--store-dir "
                "to another disk, then rerun the same command to resume")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{f' ({where})' if where else ''}: {reason}"
    if error.errno == errno.ENOTDIR:
        return f"{where or 'a path'}: not a directory (a part of the path is a file)"
    if error.errno == errno.EISDIR:
        return f"{where or 'a path'} is a directory, where a file was expected"
    return f"{where}: {reason}" if where else reason


def user_message(error: VQTError | OSError) -> str:
    """What `vqt: error: ...` says for a user error: OS errors via `os_error_message`, others their message."""
    return os_error_message(error) if isinstance(error, OSError) else str(error)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none); OS errors via
    `os_error_message`, so a user error is always one line."""
    if isinstance(error, OSError):
        return os_error_message(error)
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
