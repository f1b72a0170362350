"""Error types a user can cause, each carrying a message that names the problem and the fix.

The CLI turns any :class:`VlkdError` into a single line on stderr and a non-zero
exit code instead of a traceback; library users can catch them by type.
"""

from __future__ import annotations

from pathlib import Path


class VlkdError(Exception):
    """Base class of every error that user input (a file, a config value, a path) can cause."""


class ConfigError(VlkdError, ValueError):
    """A configuration value is missing, of the wrong type or inconsistent."""


class MissingFileError(VlkdError, FileNotFoundError):
    """A file or folder the user pointed at does not exist."""

    def __init__(self, path: str | Path, what: str = "file", fix: str = ""):
        self.path = Path(path)
        message = f"{what} not found: {self.path}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class MediaReadError(VlkdError, RuntimeError):
    """A video or image file is missing, truncated or cannot be decoded.

    Datasets catch this error, skip the sample, and report it at the end of the epoch.
    """

    kind = "file"

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read {self.kind} {self.path}: {reason}")


class VideoReadError(MediaReadError):
    """A video file is missing, truncated or cannot be decoded."""

    kind = "video"


class ImageReadError(MediaReadError):
    """An image file is missing, truncated or cannot be decoded."""

    kind = "image"


class WeightsNotFoundError(VlkdError, FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable (no network)."""
