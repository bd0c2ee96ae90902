"""The one exception type for bad user input.

Every reader, loader and command raises :class:`UsageError` when what the user gave (a name, a
file, a folder, a flag, a configuration key) cannot be used. The command line turns it into one
line on stderr and exit code 2; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UsageError", "malformed_yaml"]


class UsageError(Exception):
    """Bad input, with a one-line message naming what is wrong and where.

    Example: ``UsageError("data/cifar-10-batches-py/data_batch_3: truncated or corrupt pickle")``.
    """


def malformed_yaml(label: str, error: Exception) -> UsageError:
    """The one-line error for a YAML file that does not parse, with PyYAML's line, column and
    problem where the error carries them (``label``: what the file is, e.g. ``--space foo.yaml``)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or ""
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return UsageError(f"{label}: malformed YAML{where}: {problem}" if problem else f"{label}: malformed YAML{where}")
