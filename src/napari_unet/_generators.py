"""Running the engines' generators to the end.

Training and inference are generators that yield progress events and return
their result; the plain functions, the command line and the demo all drive
them with :func:`run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

Result = TypeVar("Result")


def run_to_end(
    generator: Generator[Any, None, Result], on_event: Callable[[Any], None] | None = None
) -> Result:
    """Advance ``generator`` until it ends; pass each yielded event to ``on_event``.

    Returns
    -------
    object
        The generator's return value.

    Examples
    --------
    >>> def count():
    ...     yield 1
    ...     yield 2
    ...     return "done"
    >>> seen = []
    >>> run_to_end(count(), seen.append), seen
    ('done', [1, 2])
    """
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
