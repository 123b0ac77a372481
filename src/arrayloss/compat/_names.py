"""Error messages in the words of the library an adapter imitates."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def peer_names(names: dict[str, str]) -> Iterator[None]:
    """Inside (a ``with`` block, or a function it decorates), the ``TypeError`` and ``ValueError`` raised
    name the arguments as the adapter does: ``names`` maps arrayloss's names (whole words of a message;
    the longest first) to the adapter's."""
    try:
        yield
    except (TypeError, ValueError) as error:
        if len(error.args) == 1 and isinstance(error.args[0], str):
            words = sorted(names, key=len, reverse=True)
            pattern = "|".join(rf"\b{re.escape(word)}\b" for word in words)
            error.args = (re.sub(pattern, lambda match: names[match[0]], error.args[0]),)
        raise
