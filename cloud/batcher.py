"""Dynamic batching: a bounded, fairly shared queue fed by the RPC threads, drained by one model thread.

Requests (each ``[n, C, h, w]`` float32) queue per *flow* (the caller: a device or a connection, named by the
servicer; requests without one share one flow). The model thread takes requests in self-clocked fair queueing
order (SCFQ, Golestani 1994): a request's tag is ``max(V, the tag of its flow's previous request) + rows``,
where ``V`` is the tag of the request last taken, and the smallest tag goes first. Within a flow that is
arrival order; across flows every backlogged flow gets the same share of rows, so a caller that floods the
queue cannot push another caller's request back by more than about one request of each other flow
(:meth:`DynamicBatcher.submit` states the bound), and a flow that was idle starts level with ``V`` (no saved-up
credit). A full queue refuses the caller that holds the most of it: a request from another flow takes the
place of that flow's newest request, which is refused (RESOURCE_EXHAUSTED). Requests are taken while their rows
fit in ``max_batch`` (a request larger than that runs alone). With
``max_delay_ms > 0`` it waits up to that long for a fuller batch, but only while more requests are
already arriving (announced with :meth:`DynamicBatcher.expect` by RPC threads still decoding them):
a lone request never waits, and under load batches fill instead of trickling. A request that finds
the model idle, the queue empty and nothing else arriving runs at once in its own RPC thread (no
thread hand-off: the unloaded round trip stays short). While the model
computes (onnxruntime releases the GIL) the RPC threads keep queueing. Each request gets its own rows
back, in order. A full queue refuses at once (RESOURCE_EXHAUSTED, as above); a request that waited longer than
``queue_timeout_ms`` (UNAVAILABLE) or past its deadline (DEADLINE_EXCEEDED) is dropped unrun;
abandoned requests (client gone) are skipped. Once :meth:`DynamicBatcher.close` began, :meth:`~DynamicBatcher.submit`
refuses (UNAVAILABLE); no request waits forever (see :meth:`Ticket.result`), and a finished request drops its
features.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from privsplit.cloud.config import BatchConfig
from privsplit.proto.status import Code, ProtocolError

RUN_LIMIT_S = 120.0  # a request without a deadline waits at most its queue timeout plus this
_DROPPED = np.zeros((0,), np.float32)


@dataclass(frozen=True, eq=False)
class BatchResult:
    probs: np.ndarray
    labels: np.ndarray
    compute_us: int
    queue_us: int
    batch_size: int


class Ticket:
    """One queued request: :meth:`result` blocks until its rows are computed (or it is refused).

    A plain lock, held from creation until the result is in, is the whole hand-off: the waiting RPC
    thread blocks on it and the model thread releases it (an Event would add a Condition and a waiter
    lock per request)."""

    __slots__ = (
        "features",
        "rows",
        "flow",
        "enqueued",
        "expires",
        "deadline",
        "done",
        "_gate",
        "_result",
        "_error",
        "abandoned",
        "evicted",
    )

    def __init__(
        self,
        features: np.ndarray,
        enqueued: float,
        expires: float,
        deadline: float | None,
        flow: Hashable = None,
    ) -> None:
        self.features = features
        self.rows = int(features.shape[0])
        self.flow = flow
        self.enqueued = enqueued
        self.expires = expires
        self.deadline = deadline
        self.done = False
        self._gate = threading.Lock()
        self._gate.acquire()
        self._result: BatchResult | None = None
        self._error: ProtocolError | None = None
        self.abandoned = False  # set by the caller when its client went away: skipped if still queued
        self.evicted = False  # refused to make room for another flow's request: left in the heap, skipped

    def _finish(self, result: BatchResult | None = None, error: ProtocolError | None = None) -> None:
        self._result, self._error = result, error
        self.features = _DROPPED  # a finished request keeps only its (small) result
        self.done = True
        self._gate.release()

    def abandon(self) -> None:
        """The caller no longer wants the result (its client went away)."""
        if not self.done:
            self.abandoned = True

    def result(self, timeout: float | None = None) -> BatchResult:
        """Wait for the rows (``timeout`` s: the RPC's deadline). Without a deadline the wait still ends:
        at the queue timeout plus :data:`RUN_LIMIT_S` for the model to run the batch (UNAVAILABLE)."""
        if not self.done:
            bounded = timeout is not None
            wait = max(timeout, 0.0) if timeout is not None else max(self.expires - time.monotonic(), 0.0) + RUN_LIMIT_S
            if not self._gate.acquire(timeout=wait):
                self.abandoned = True
                if bounded:
                    raise ProtocolError(Code.DEADLINE_EXCEEDED, "the deadline passed before the model ran the request")
                raise ProtocolError(
                    Code.UNAVAILABLE,
                    f"the model did not answer within {wait:.0f} s (server stuck); retry another replica",
                )
            self._gate.release()  # open for good: result() may be asked again
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class _Flow:
    """One caller's part of the queue: the tag of its newest request and its queued requests, oldest first."""

    __slots__ = ("last", "tickets")

    def __init__(self, last: int) -> None:
        self.last = last
        self.tickets: deque[Ticket] = deque()


class DynamicBatcher:
    """``run(features) -> object with .probs, .labels, .compute_us``, executed in batches on one thread.

    ``on_batch(rows, compute_us)`` and ``on_depth(depth)`` report to metrics. :meth:`start` the model
    thread, :meth:`submit` from any thread, :meth:`close` to drain.
    """

    def __init__(
        self, run: Callable, config: BatchConfig, *, on_batch: Callable | None = None, on_depth: Callable | None = None
    ) -> None:
        self._run = run
        self.config = config
        self._on_batch = on_batch or (lambda rows, compute_us: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._heap: list[tuple[int, int, Ticket]] = []  # (tag, arrival number, ticket): smallest tag runs first
        self._queued = 0  # requests in the heap that are not evicted
        self._flows: dict[Hashable, _Flow] = {}  # the flows with queued requests (none kept once drained)
        self._vtime = 0  # V: the tag of the request taken last
        self._arrival = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._busy = False
        self._closed = False  # close() began: submit refuses, the model thread drains the queue and stops
        self._incoming = 0  # requests announced by expect() and not yet submitted
        self._filling = False  # the model thread waits for announced requests
        self._max_delay = config.max_delay_ms / 1e3
        self._queue_timeout = config.queue_timeout_ms / 1e3

    @property
    def depth(self) -> int:
        """Requests queued (all flows)."""
        return self._queued

    @property
    def flows(self) -> int:
        """Flows (callers) with requests queued."""
        return len(self._flows)

    def start(self) -> DynamicBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="privsplit-model", daemon=True)
            self._thread.start()
        return self

    def expect(self) -> None:
        """Announce a request that is being received (call :meth:`submit` with ``expected=True`` or
        :meth:`unexpect` next): the model thread may wait for it to join the batch."""
        with self._cond:
            self._incoming += 1

    def unexpect(self) -> None:
        """An announced request will not be submitted (it was refused while decoding)."""
        with self._cond:
            self._incoming = max(self._incoming - 1, 0)
            if self._filling:
                self._cond.notify()

    def submit(
        self, features: np.ndarray, *, timeout_s: float | None = None, expected: bool = False, flow: Hashable = None
    ) -> Ticket:
        """Queue one request (``timeout_s``: its RPC deadline); wait with ``ticket.result(timeout)``.
        ``expected``: it was announced with :meth:`expect`. ``flow``: the caller it is charged to (requests
        without one share a flow). Refused (UNAVAILABLE) once :meth:`close` began: the check and the append
        happen under one lock, so nothing joins a queue that is being drained.

        Fairness bound: while a request of ``r`` rows waits, each other flow has at most ``r`` plus its
        largest request's rows taken before it, however many requests that flow has queued."""
        now = time.monotonic()
        deadline = None if timeout_s is None else now + timeout_s
        expires = now + self._queue_timeout if deadline is None else min(now + self._queue_timeout, deadline)
        ticket = Ticket(features, now, expires, deadline, flow)
        with self._cond:
            if expected:
                self._incoming = max(self._incoming - 1, 0)
            if self._closed:
                if self._filling:
                    self._cond.notify()
                raise ProtocolError(
                    Code.UNAVAILABLE, "the server is draining and takes no new requests; retry another replica"
                )
            if self._queued >= self.config.max_queue and not self._make_room(flow):
                if self._filling:
                    self._cond.notify()
                raise ProtocolError(
                    Code.RESOURCE_EXHAUSTED,
                    f"the request queue is full ({self.config.max_queue} requests waiting); this caller has "
                    f"{len(self._flows[flow].tickets) if flow in self._flows else 0} of them; retry with backoff",
                )
            inline = not self._queued and not self._busy and self._incoming == 0
            if inline:  # the model is idle and nothing else is coming: run it here, saving two thread hand-offs
                self._busy = True
            else:
                self._enqueue(ticket)
                if self._queued == 1 or self._filling:
                    self._cond.notify()
        if inline:
            try:
                self._execute([ticket])
            finally:
                with self._cond:
                    self._busy = False
                    if self._queued:
                        self._cond.notify()
        return ticket

    def infer(self, features: np.ndarray, *, timeout_s: float | None = None) -> BatchResult:
        """Submit and wait (up to the deadline)."""
        return self.submit(features, timeout_s=timeout_s).result(timeout_s)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every queued one, then stop the model thread. What is still queued
        when ``timeout`` passes (the model thread is stuck or was never started) is refused, UNAVAILABLE:
        no caller waits for a thread that will not run its request."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = [ticket for _, _, ticket in self._heap]
            self._heap, self._flows, self._queued = [], {}, 0
        for ticket in left:
            if not ticket.done:
                ticket._finish(error=ProtocolError(Code.UNAVAILABLE, "the server stopped before running the request"))

    # ---- the fair queue (under the lock) ---------------------------------------------------------------
    def _enqueue(self, ticket: Ticket) -> None:
        """Tag = max(V, the flow's last tag) + rows: a backlogged flow's requests line up behind each other,
        an idle flow starts level with the request taken last."""
        flow = self._flows.get(ticket.flow)
        if flow is None:
            flow = self._flows[ticket.flow] = _Flow(self._vtime)
        flow.last = max(flow.last, self._vtime) + ticket.rows
        flow.tickets.append(ticket)
        self._queued += 1
        heapq.heappush(self._heap, (flow.last, next(self._arrival), ticket))

    def _dequeue(self) -> Ticket:
        """Remove the request with the smallest tag (the oldest of its flow); V moves to its tag; a flow with
        nothing queued is forgotten. An evicted request is only dropped from the heap (counted already)."""
        tag, _, ticket = heapq.heappop(self._heap)
        if ticket.evicted:
            return ticket
        self._vtime = max(self._vtime, tag)
        flow = self._flows[ticket.flow]
        flow.tickets.popleft()
        self._queued -= 1
        if not flow.tickets:
            del self._flows[ticket.flow]
        return ticket

    def _make_room(self, newcomer: Hashable) -> bool:
        """The queue is full: refuse the newest request of the flow that holds the most of it, unless that is the
        newcomer's flow or holds at most one more than it (then the newcomer is refused: False)."""
        biggest = max(self._flows, key=lambda key: len(self._flows[key].tickets))
        victim, own = self._flows[biggest], self._flows.get(newcomer)
        if biggest == newcomer or len(victim.tickets) <= (len(own.tickets) if own else 0) + 1:
            return False
        ticket = victim.tickets.pop()
        victim.last -= ticket.rows  # it never ran: its share goes back
        ticket.evicted = True
        self._queued -= 1
        if len(self._heap) > 2 * self.config.max_queue:  # evicted entries wait in the heap until they surface
            self._heap = [entry for entry in self._heap if not entry[2].evicted]
            heapq.heapify(self._heap)
        ticket._finish(
            error=ProtocolError(
                Code.RESOURCE_EXHAUSTED,
                f"the request queue is full ({self.config.max_queue} requests waiting) and this caller holds the "
                f"most of it ({len(victim.tickets) + 1}); retry with backoff",
            )
        )
        return True

    # ---- model thread -------------------------------------------------------------------------------
    def _expired(self, ticket: Ticket, now: float) -> ProtocolError | None:
        if now <= ticket.expires:
            return None
        if ticket.deadline is not None and now > ticket.deadline:
            return ProtocolError(Code.DEADLINE_EXCEEDED, "the deadline passed while the request was queued")
        return ProtocolError(
            Code.UNAVAILABLE,
            f"the request waited more than {self.config.queue_timeout_ms:g} ms in the queue "
            "(server overloaded); retry with backoff",
        )

    def _fill(self, items: list[Ticket], rows: int) -> int:
        """Under the lock: move queued requests into ``items`` in fair order while they fit; return the row count."""
        now = time.monotonic()
        heap, limit = self._heap, self.config.max_batch
        while heap:
            ticket = heap[0][2]
            if ticket.evicted:
                self._dequeue()
                continue
            if ticket.abandoned:
                self._dequeue()
                if not ticket.done:  # release a caller still waiting (its client went away)
                    ticket._finish(error=ProtocolError(Code.CANCELLED, "the client cancelled the request"))
                continue
            error = self._expired(ticket, now)
            if error is not None:
                self._dequeue()
                ticket._finish(error=error)
                continue
            if items and rows + ticket.rows > limit:
                break
            self._dequeue()
            items.append(ticket)
            rows += ticket.rows
            if rows >= limit:
                break
        return rows

    def _take(self) -> list[Ticket]:
        """Block until there is work; return the next batch (empty: stop)."""
        items: list[Ticket] = []
        with self._cond:
            while True:
                while (not self._heap or self._busy) and not self._closed:
                    self._cond.wait()  # nothing queued, or a request is running inline in its RPC thread
                while self._busy:  # stopping: let the inline run finish first
                    self._cond.wait(0.01)
                if not self._heap:
                    return items  # stopping and drained
                self._busy = True
                rows = self._fill(items, 0)
                if items:
                    break
                self._busy = False
            if self._max_delay > 0:
                fill_by = time.monotonic() + self._max_delay
                self._filling = True
                try:
                    while rows < self.config.max_batch and self._incoming > 0 and not self._closed:
                        if self._heap and rows + self._heap[0][2].rows > self.config.max_batch:
                            break
                        remaining = fill_by - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                        rows = self._fill(items, rows)
                finally:
                    self._filling = False
        return items

    def _work(self) -> None:
        while True:
            items = self._take()
            if not items:
                return
            try:
                self._execute(items)
            finally:
                with self._cond:
                    self._busy = False
            self._on_depth(self._queued)

    def _execute(self, items: list[Ticket]) -> None:
        dispatched = time.monotonic()
        rows = sum(t.rows for t in items)
        try:
            feats = items[0].features if len(items) == 1 else np.concatenate([t.features for t in items], axis=0)
            out = self._run(feats)
        except Exception as exc:  # the model failed on this batch: fail its requests, keep serving
            error = ProtocolError(
                Code.INTERNAL, f"the model failed on a batch of {rows} rows: {type(exc).__name__}: {exc}"
            )
            for ticket in items:
                ticket._finish(error=error)
            return
        self._on_batch(rows, out.compute_us)
        offset = 0
        for ticket in items:
            ticket._finish(
                BatchResult(
                    probs=out.probs[offset : offset + ticket.rows],
                    labels=out.labels[offset : offset + ticket.rows],
                    compute_us=out.compute_us,
                    queue_us=int((dispatched - ticket.enqueued) * 1e6),
                    batch_size=rows,
                )
            )
            offset += ticket.rows
