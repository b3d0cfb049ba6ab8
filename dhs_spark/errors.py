"""Errors raised by Dark Halo Scope.

Which error to raise when:

- ``ConfigError``: a configuration value (YAML file, CLI flag) is missing, of the wrong type,
  out of range or inconsistent with another field. It carries the dotted field path
  (``data.moffat_beta``), the offending value and the file it came from.
- ``InputDataError``: an input file or row (catalogue, brick, COSMOS library, cutout) is
  missing, unreadable or holds values that cannot be used. It names the file and, where there
  is one, the row or object identifier.
- ``RejectError``: one stamp (or one catalogue row) cannot be produced; the job catches it and
  writes a reject row with ``reason`` instead of a stamp. Never used to abort a whole job.

All subclass both ``DHSError`` and the built-in ``ValueError`` so callers can catch either,
and all pickle (they cross Spark's executor boundary).
"""

from __future__ import annotations


class DHSError(Exception):
    """Base class of every error raised on purpose by this project."""


class ConfigError(DHSError, ValueError):
    """A configuration problem, naming the field path, the value and the source file."""

    def __init__(self, field: str, message: str, value=None, file: str | None = None):
        self.field = field
        self.message = message
        self.value = value
        self.file = file
        where = f"{file}: " if file else ""
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{where}{field}: {message}{shown}")

    def __reduce__(self):
        return (type(self), (self.field, self.message, self.value, self.file))


class ConfigErrors(DHSError, ValueError):
    """Several ``ConfigError`` found at once; ``errors`` holds each of them."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __reduce__(self):
        return (type(self), (self.errors,))


class InputDataError(DHSError, ValueError):
    """An input file, row or object that cannot be used; the message names it."""


class RejectError(DHSError, ValueError):
    """One stamp or row cannot be made; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.detail))
