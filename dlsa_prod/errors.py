"""User-facing error types: each carries one readable line naming the file, key or field."""


class DLSAError(Exception):
    """Base class for errors that the CLI prints as one line (no traceback)."""


class ConfigError(DLSAError):
    """A configuration file is malformed, has an unknown key, a wrong type or an unsupported option."""


class DataError(DLSAError):
    """A data file is missing, empty, malformed, or holds invalid values."""


class RunDirError(DLSAError):
    """A run directory is missing, incomplete, or would be overwritten."""
