"""Errors a user can fix. No dependencies: the ``cascade`` CLI catches these without importing pandas,
pyarrow or scipy, so that ``cascade --help`` starts fast.

Modules raise a subclass of :class:`UserError` (e.g. ``class RecordsError(UserError)``) with a
one-line message that names the field, column or option and the fix; the CLI prints it and exits 2.
``UserError`` is a ``ValueError``, so ``except ValueError`` keeps catching it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input a user can fix (a file, a column, an option): printed as one line, exit status 2."""


def format_validation_error(e, empty: str | None = "config") -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message`` per problem, joined by ``;``. A
    problem of the whole model (no field) is prefixed with ``empty``, or not at all when it is None (its
    message then names its field itself)."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or empty
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


__all__ = ["UserError", "format_validation_error"]
