"""The one progress-bar helper (torch-free): tqdm on stderr, or a silent stand-in.

``PRIVSPLIT_PROGRESS=0`` hides every bar, ``=1`` forces them; unset, bars show only when stderr is a
terminal, so CI logs and pipes get the one-line stage reports instead of every redrawn frame.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

PROGRESS_ENV = "PRIVSPLIT_PROGRESS"


def bars_enabled(requested: bool = True) -> bool:
    """Whether a bar asked for with ``requested`` is drawn (see the module doc for the rules)."""
    if not requested:
        return False
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class SilentBar:
    """What a bar offers (iteration, ``update``, ``set_postfix``, context manager), doing nothing."""

    def __init__(self, items: Iterable | None = None) -> None:
        self._items = items if items is not None else ()

    def __iter__(self):
        return iter(self._items)

    def __enter__(self) -> "SilentBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(items: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"):
    """A tqdm bar over ``items`` (or a manual one with ``total``) on stderr, or a :class:`SilentBar`."""
    if not bars_enabled(enabled):
        return SilentBar(items)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the base (edge) install has no tqdm
        return SilentBar(items)
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
