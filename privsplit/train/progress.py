"""Progress bars on stderr that can be switched off (tests, JSON-only output)."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


class _Silent:
    def __init__(self, items: Iterable[T]) -> None:
        self._items = items

    def __iter__(self):
        return iter(self._items)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def write(self, text: str) -> None:
        pass


def progress_bar(items: Iterable[T], *, desc: str, enabled: bool = True, total: int | None = None):
    """A tqdm bar on stderr when ``enabled``, else a silent iterable with the same methods."""
    if not enabled:
        return _Silent(items)
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
