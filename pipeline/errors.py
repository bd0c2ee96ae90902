"""The one exception type for bad user input.

Every reader, loader and command raises :class:`UsageError` when what the user gave (a name, a
file, a folder, a flag, a configuration key) cannot be used. The command line turns it into one
line on stderr and exit code 2; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """Bad input, with a one-line message naming what is wrong and where.

    Example: ``UsageError("data/cifar-10-batches-py/data_batch_3: truncated or corrupt pickle")``.
    """
