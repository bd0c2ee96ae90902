"""Environment variables set for one block only, so that importing or calling the pipeline
leaves the process's environment as it found it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = ["scoped_environment"]


@contextmanager
def scoped_environment(values: Mapping[str, str], *, keep_set: bool = False) -> Iterator[None]:
    """Set ``values`` for the block, then restore each name to what it was (or unset it).

    Args:
        values: name → value.
        keep_set: leave a name the caller already set as it is (a user's own choice wins);
            otherwise every name takes ``values``' value for the block.
    """
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if keep_set:
            os.environ.setdefault(name, value)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
