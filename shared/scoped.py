"""A context variable set for the length of a block, in the running task (and the tasks and threads it starts)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def scoped(var: ContextVar[T], value: T) -> Iterator[None]:
    """``var`` is ``value`` while the block runs. A task dropped unfinished (its loop gone: a worker that died, a host
    shutting down) is closed by the collector in another context, where nothing was set: nothing is reset there."""
    token = var.set(value)
    try:
        yield
    except GeneratorExit:
        raise
    except BaseException:
        var.reset(token)
        raise
    var.reset(token)
