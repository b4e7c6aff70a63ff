"""Exceptions that etp raises for bad input.

Every user-facing failure is an :class:`EtpError` whose message names the file, record or
config key at fault and says what is wrong, so the CLI can print it without a traceback.
"""

from __future__ import annotations


class EtpError(Exception):
    """Base class of all etp errors that the CLI reports as a one-line message."""


class DataError(EtpError):
    """A data source, file or record cannot be read or fails validation."""


class ConfigError(EtpError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class ModelError(EtpError):
    """A model directory or text model cannot be found or does not match the code."""


class TrainingError(EtpError):
    """Training cannot continue (e.g. a non-finite loss)."""


class WriteError(EtpError, OSError):
    """An output file or directory cannot be written (no space, read-only, permissions...).

    Also an :class:`OSError` (``errno`` and ``filename`` set), so code that catches OSError
    still sees it; the message is one line naming the path and the cause.
    """

    def __init__(self, errno_: int, message: str, filename: str | None = None) -> None:
        super().__init__(errno_, message)
        self.message = message
        if filename is not None:
            self.filename = filename

    def __str__(self) -> str:
        return self.message
