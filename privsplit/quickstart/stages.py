"""Numbered, timed stages with a one-line progress report each (to stderr)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from privsplit.results import from_dict, to_dict


@dataclass(frozen=True)
class StageTime:
    name: str
    seconds: float
    detail: str = ""

    def to_json(self) -> dict:
        return {**to_dict(self), "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: dict) -> StageTime:
        return from_dict(cls, data)


class _Current:
    detail = ""


class StageLog:
    """``with log.stage("train protected") as st: ...; st.detail = "acc 0.93"`` prints and records.

    ``on_record`` is called after every finished stage (the quickstart saves its state there, so an
    interrupted run still tells how far it came).
    """

    def __init__(self, total: int, *, progress: bool = True, on_record: Callable[[], None] | None = None) -> None:
        self.total = total
        self.progress = progress
        self.on_record = on_record
        self.times: list[StageTime] = []
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.progress:
            print(f"privsplit quickstart: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[_Current]:
        number = len(self.times) + 1
        self.say(f"[{number}/{self.total}] {name} ...")
        current = _Current()
        t0 = time.perf_counter()
        yield current
        seconds = time.perf_counter() - t0
        self.times.append(StageTime(name=name, seconds=seconds, detail=current.detail))
        self.say(
            f"[{number}/{self.total}] {name}: done in {seconds:.1f} s"
            + (f" ({current.detail})" if current.detail else "")
        )
        if self.on_record is not None:
            self.on_record()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
