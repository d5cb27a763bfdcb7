"""Errors a user can fix (a missing file, an unknown name, a bad number), told apart from bugs.

``clipfed``'s ``main()`` prints these as one line, ``clipfed: <message>``, and exits 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the command line; the message names the option or file and what would work."""
