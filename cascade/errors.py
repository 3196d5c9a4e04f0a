"""Errors a user can fix. No dependencies: the ``cascade`` CLI catches these without importing pandas,
pyarrow or scipy, so that ``cascade --help`` starts fast.

Modules raise a subclass of :class:`UserError` (e.g. ``class RecordsError(UserError)``) with a
one-line message that names the field, column or option and the fix; the CLI prints it and exits 2.
``UserError`` is a ``ValueError``, so ``except ValueError`` keeps catching it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input a user can fix (a file, a column, an option): printed as one line, exit status 2."""


__all__ = ["UserError"]
