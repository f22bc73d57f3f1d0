"""The one progress-bar helper (torch-free): tqdm on stderr, or a quieter stand-in.

``PRIVSPLIT_PROGRESS=0`` hides every bar, ``=1`` forces them. Unset, bars show only when stderr is a
terminal; elsewhere (CI logs, pipes, ``nohup``) long loops print a plain line once a minute and one
when they end, instead of every redrawn frame, and short loops print nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sized

PROGRESS_ENV = "PRIVSPLIT_PROGRESS"


def _setting() -> str:
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes"):
        return "on"
    return ""


def bars_enabled(requested: bool = True) -> bool:
    """Whether a bar asked for with ``requested`` is drawn (see the module doc for the rules)."""
    setting = _setting()
    if not requested or setting == "off":
        return False
    return setting == "on" or bool(getattr(sys.stderr, "isatty", lambda: False)())


class SilentBar:
    """What a bar offers (iteration, ``update``, ``set_postfix``, context manager), doing nothing."""

    def __init__(self, items: Iterable | None = None) -> None:
        self._items = items if items is not None else ()

    def __iter__(self):
        return iter(self._items)

    def __enter__(self) -> SilentBar:
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


class LineBar(SilentBar):
    """For logs: a line every ``every_s`` seconds while a loop runs, and one at its end if it ran that long."""

    def __init__(self, items: Iterable | None, *, desc: str, total: int | None, every_s: float = 60.0) -> None:
        super().__init__(items)
        self.desc, self.every_s, self.n = desc, every_s, 0
        self.total = total if total is not None else (len(items) if isinstance(items, Sized) else None)
        self.started = self.last = time.monotonic()
        self.done = False

    def _say(self, what: str) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        print(
            f"privsplit: {self.desc}: {self.n}{of} {what} {time.monotonic() - self.started:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._say("after")

    def __iter__(self):
        for item in self._items:
            yield item
            self.update()
        self.close()

    def close(self) -> None:
        if not self.done and time.monotonic() - self.started >= self.every_s:
            self._say("done in")
        self.done = True

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(
    items: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"
):
    """A tqdm bar over ``items`` (or a manual one with ``total``) on stderr; off a terminal a
    :class:`LineBar`; a :class:`SilentBar` when progress is off."""
    if not enabled or _setting() == "off":
        return SilentBar(items)
    if not bars_enabled(enabled):
        return LineBar(items, desc=desc, total=total)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the base (edge) install has no tqdm
        return SilentBar(items)
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
