"""The batcher shares the model fairly between flows (callers): a flooding caller cannot push another caller's
request back by more than a bounded number of rows, whatever it has queued. Behaviour only: the model is held
at a gate while the queue is filled, then the batches it runs are read back (the timing is in
benchmarks/serve_hardening.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from privsplit.cloud.batcher import DynamicBatcher
from privsplit.cloud.config import BatchConfig
from privsplit.proto.status import Code, ProtocolError


class RecordingModel:
    """Runs a batch of ``[n, 1]`` request ids; remembers each batch's ids; the first run waits at a gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[int]] = []
        self.pause_at: int | None = None  # the run (counting from 0) that waits for resume, its batch taken
        self.paused, self.resume = threading.Event(), threading.Event()

    def __call__(self, x: np.ndarray):
        self.entered.set()
        assert self.gate.wait(10)
        if len(self.batches) == self.pause_at:
            self.paused.set()
            assert self.resume.wait(10)
        self.batches.append([int(v) for v in x[:, 0]])
        return SimpleNamespace(probs=x.copy(), labels=np.zeros(len(x), np.int64), compute_us=1)


def _rows(request_id: int, rows: int = 1) -> np.ndarray:
    return np.full((rows, 1), request_id, np.float32)


class Held:
    """A batcher whose model is busy (a first request is held at the gate) while the test queues requests."""

    def __init__(self, max_batch: int, max_queue: int = 10_000) -> None:
        self.model = RecordingModel()
        self.batcher = DynamicBatcher(self.model, BatchConfig(max_batch=max_batch, max_queue=max_queue)).start()
        self.tickets = []
        self._first = threading.Thread(target=lambda: self.batcher.submit(_rows(-1), flow="warm"), daemon=True)
        self._first.start()
        assert self.model.entered.wait(10)  # runs inline in its thread, held: everything else queues

    def submit(self, request_id: int, flow, rows: int = 1) -> None:
        self.tickets.append(self.batcher.submit(_rows(request_id, rows), flow=flow))

    def release(self) -> list[list[int]]:
        """The batches run after the held one (ids, one entry per row)."""
        self.model.gate.set()
        self._first.join(10)
        for ticket in self.tickets:
            try:
                ticket.result(10)
            except ProtocolError:  # refused (a full queue): the tests that refuse check it themselves
                assert ticket.done
        self.batcher.close(timeout=10)
        return self.model.batches[1:]


def _batch_of(batches: list[list[int]], request_id: int) -> int:
    return next(i for i, batch in enumerate(batches) if request_id in batch)


def test_a_flooding_caller_cannot_delay_another_callers_request_past_the_next_batch():
    held = Held(max_batch=8)
    for k in range(500):
        held.submit(k, "flood")  # one caller queues 500 requests
    held.submit(10_000, "other")  # then another caller sends one
    batches = held.release()
    assert _batch_of(batches, 10_000) == 0  # FIFO would put it behind 62 batches of the flood
    assert batches[0].index(10_000) <= 2  # at most r + 1 = 2 flood rows ahead of it
    assert sum(len(b) for b in batches) == 501


def test_the_bound_holds_for_several_flooders_and_for_large_requests():
    held = Held(max_batch=16)
    for k in range(100):
        for f in range(3):
            held.submit(f * 1000 + k, f"flood {f}")  # three callers, 100 one-row requests each
    for k in range(20):
        held.submit(5000 + k, "wide", rows=16)  # a caller whose every request fills a batch alone
    held.submit(9000, "other", rows=2)
    batches = held.release()
    # ahead of a 2-row request: at most 2 + 1 rows of each one-row flooder, 2 + 16 of the wide caller
    ahead = sum(len(b) for b in batches[: _batch_of(batches, 9000)]) + batches[_batch_of(batches, 9000)].index(9000)
    assert ahead <= 3 * (2 + 1) + (2 + 16)
    assert _batch_of(batches, 9000) <= 2


def test_backlogged_callers_share_every_batch_and_keep_their_own_order():
    held = Held(max_batch=8)
    for k in range(40):
        held.submit(k, "a")
    for k in range(40):
        held.submit(1000 + k, "b")  # queued after all of a's: FIFO would run a's 40 first
    batches = held.release()
    for batch in batches[:9]:  # while both are backlogged: half of each batch each (one row either way)
        a = sum(1 for v in batch if v < 1000)
        assert abs(a - (len(batch) - a)) <= 2, batches
    order = [v for b in batches for v in b]
    assert [v for v in order if v < 1000] == list(range(40))  # each flow in arrival order
    assert [v for v in order if v >= 1000] == list(range(1000, 1040))


def test_rows_not_requests_are_shared():
    held = Held(max_batch=8)
    for k in range(20):
        held.submit(k, "wide", rows=4)
    for k in range(40):
        held.submit(1000 + k, "narrow")
    batches = held.release()
    rows_wide = sum(1 for b in batches[:6] for v in b if v < 1000)
    rows_narrow = sum(1 for b in batches[:6] for v in b if v >= 1000)
    assert abs(rows_wide - rows_narrow) <= 8  # per request the narrow caller would get a fifth of the rows


def test_an_idle_caller_saves_no_credit():
    """A caller that sent nothing while another was served starts level: it cannot then take whole batches."""
    held = Held(max_batch=4)
    for k in range(60):
        held.submit(k, "busy")
    held.model.pause_at = 8  # the held run, then 7 batches of the busy caller alone; the 8th waits
    held.model.gate.set()
    assert held.model.paused.wait(10)
    for k in range(30):
        held.submit(1000 + k, "late")
    held.model.resume.set()
    batches = held.release()
    assert all(v < 1000 for b in batches[:8] for v in b)
    for batch in batches[8:14]:  # both backlogged: the late caller gets half, not everything
        late = sum(1 for v in batch if v >= 1000)
        assert late == 2, batches


def test_requests_without_a_flow_stay_first_come_first_served():
    held = Held(max_batch=4)
    for k in range(12):
        held.submit(k, None, rows=1 + k % 3)
    batches = held.release()
    assert [v for b in batches for v in dict.fromkeys(b)] == list(range(12))


@pytest.mark.parametrize("abandon", [True, False])
def test_flows_are_forgotten_once_drained(abandon):
    held = Held(max_batch=4)
    for k in range(50):
        held.submit(k, f"connection {k % 7}")
    assert held.batcher.flows == 7 and held.batcher.depth == 50
    if abandon:
        for ticket in held.tickets[::2]:
            ticket.abandon()
    held.model.gate.set()
    held._first.join(10)
    for ticket in held.tickets:
        try:
            ticket.result(10)
        except Exception:
            assert abandon
    assert held.batcher.flows == 0 and held.batcher.depth == 0
    held.batcher.close(timeout=10)


def _refused(ticket) -> str:
    try:
        ticket.result(10)
    except ProtocolError as exc:
        assert exc.code == Code.RESOURCE_EXHAUSTED, exc
        return str(exc)
    return ""


def test_a_full_queue_refuses_the_caller_that_holds_the_most_of_it():
    held = Held(max_batch=4, max_queue=10)
    for k in range(10):
        held.submit(k, "flood")  # the flood fills the queue
    with pytest.raises(ProtocolError, match=r"queue is full \(10 requests waiting\); this caller has 10 of them"):
        held.submit(10, "flood")  # more from the flood: refused
    for k in range(5):
        held.submit(100 + k, "other")  # another caller still gets in: each takes the flood's newest place
    assert held.batcher.depth == 10 and held.batcher.flows == 2
    with pytest.raises(ProtocolError, match="this caller has 5 of them"):
        held.submit(105, "other")  # 5 against 5: its fair part, no further
    flood, other = held.tickets[:10], held.tickets[10:]
    held.model.gate.set()
    refusals = [_refused(t) for t in flood]
    assert [bool(r) for r in refusals] == [False] * 5 + [True] * 5  # the flood's newest five; its oldest kept
    assert "this caller holds the most of it" in refusals[-1]
    assert all(_refused(t) == "" for t in other)
    batches = held.release()
    assert sorted(v for b in batches for v in b) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
    assert held.batcher.flows == 0 and held.batcher.depth == 0


def test_requests_without_a_flow_are_refused_as_before_when_the_queue_is_full():
    held = Held(max_batch=4, max_queue=3)
    for k in range(3):
        held.submit(k, None)
    with pytest.raises(ProtocolError, match="queue is full"):
        held.submit(3, None)
    assert [v for b in held.release() for v in b] == [0, 1, 2]
