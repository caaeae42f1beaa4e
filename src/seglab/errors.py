"""seglab's error classes: what a user can fix, as opposed to a bug.

Every error seglab raises for something the user controls (an option value, a file, a checkpoint,
a missing optional extra) is a :class:`SeglabError`. Each also subclasses the built-in exception a
Python caller would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``ImportError``,
``RuntimeError``), so ``except ValueError`` keeps working.

The command line prints a :class:`SeglabError` (and an ``OSError`` such as a full disk or a
read-only folder) as one line and exits with status 1; anything else is a bug in seglab and keeps
its traceback.

Example:
    >>> try:
    ...     raise InvalidValueError("tile must be positive; got 0.")
    ... except ValueError as err:
    ...     isinstance(err, SeglabError)
    True
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InvalidTypeError",
    "InvalidValueError",
    "MissingExtraError",
    "MissingFileError",
    "RunFolderError",
    "SeglabError",
    "missing_extra",
]


class SeglabError(Exception):
    """Base class of the errors a user can fix; the CLI prints them as one line."""


class InvalidValueError(SeglabError, ValueError):
    """An option or argument has a value seglab cannot use; the message names it and the fix."""


class InvalidTypeError(SeglabError, TypeError):
    """An option or argument has the wrong type; the message names the type expected."""


class MissingFileError(SeglabError, FileNotFoundError):
    """A file or folder the user named does not exist (or holds nothing usable)."""


class MissingExtraError(SeglabError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class DataError(InvalidValueError):
    """An image, mask or dataset is unreadable or inconsistent; the message names the file."""


class ConfigError(InvalidValueError):
    """A training configuration is invalid; the message names the key path."""


class CheckpointError(InvalidValueError):
    """A file is not a loadable seglab checkpoint (unsafe, corrupt, or missing keys)."""


class RunFolderError(SeglabError, RuntimeError):
    """A run folder cannot be used as asked (it holds another run, or is not writable)."""


def missing_extra(package: str, extra: str, what: str) -> MissingExtraError:
    """The error for a missing optional package, naming the pip command that installs it.

    Args:
        package: the import name that failed (``"onnxruntime"``).
        extra: seglab's extra that provides it (``"onnx"``).
        what: what needed it, for the message (``"seglab export"``).

    Example:
        >>> str(missing_extra("onnxscript", "onnx", "ONNX export"))
        "ONNX export needs the optional package 'onnxscript': pip install 'seglab[onnx]'."
    """
    return MissingExtraError(f"{what} needs the optional package {package!r}: pip install 'seglab[{extra}]'.")
