"""User-facing errors: one clear message, no traceback at the command line (see `vqt --debug`)."""


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
