"""Delivers a host agent's flow log records to the control plane (``POST /v1/flow-logs/<id>/records``).

A thin shell around ``flowlog``: the agent flushes its aggregators and hands each window's records here.

    submit(fl_id, records, window_start, window_end, fields=)  queue them (never blocks, never raises)
    await ship(...)                                             queue them, then deliver what is queued
    await run()                                                 a task that retries queued deliveries

Deliveries go oldest first, one POST per batch. A batch the control plane cannot take now (unreachable,
5xx, 408, 429) stays at the head of the queue and is retried, by ``run`` with a backoff of 0.5 s to 30
s, or by the next ``ship``. A batch it refuses (another 4xx: the flow log was deleted, a bad token) is
dropped and counted as rejected: a retry would be refused again.

The queue is bounded (``max_batches`` batches, ``max_records`` records). When it overflows, the oldest
batch is dropped and counted. Its loss is not silent in the logs: the next batch delivered for that
flow log starts with one SKIPDATA record per ENI the dropped records were about (their identity fields,
start and end = the dropped windows' span, everything else ``-``; see ``flowlog``). That needs the
format's field names, passed as ``fields`` with the batch; without them a loss shows only in
``status()``. A control plane that answers again after a long outage therefore receives the newest
windows, marked where older ones are missing.

Nothing here raises into the caller (cancellation excepted): errors are counted and logged.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Sequence

import httpx

from . import flowlog, logs
from .controlplane.client import http_options

MAX_DELIVERY = 100_000  # records per POST: the API's limit
MARKER_ROOM = 1_000  # of those, kept free for SKIPDATA markers (one per ENI of a lost batch)
RETRY_MIN, RETRY_MAX = 0.5, 30.0


@dataclasses.dataclass(eq=False)
class _Batch:
    fl_id: str
    records: list[str]
    window_start: float
    window_end: float
    fields: tuple[str, ...] | None
    # SKIPDATA markers this batch carries for earlier lost batches: identity -> [start, end]
    markers: dict[flowlog.Identity, list[float]] = dataclasses.field(default_factory=dict)


def _merge(into: dict, identity, start: float, end: float) -> None:
    span = into.get(identity)
    if span is None:
        into[identity] = [start, end]
    else:
        span[0], span[1] = min(span[0], start), max(span[1], end)


class FlowLogShipper:
    def __init__(self, url: str, token: str, host_name: str, max_batches: int = 1_000,
                 max_records: int = 1_000_000, timeout: float = 10.0, tls=None):
        # tls: a config.TlsConfig, for an https:// control plane that requires client certificates
        self.http = httpx.AsyncClient(**http_options(url, True, tls), timeout=timeout,
                                      headers={"Authorization": f"Bearer {token}"})
        self.host_name = host_name
        self.max_batches = max(1, max_batches)
        self.max_records = max(1, max_records)
        self._queue: collections.deque[_Batch] = collections.deque()
        self._queued_records = 0
        self._in_flight: _Batch | None = None
        self._lost: dict[str, dict[flowlog.Identity, list[float]]] = {}  # fl id -> markers still to deliver
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._loop = None
        self.connected: bool | None = None  # None: nothing delivered or tried yet
        self.last_error = ""
        self.counters = {"delivered_batches": 0, "delivered_records": 0, "skipdata_markers": 0,
                         "retries": 0, "dropped_batches": 0, "dropped_records": 0, "rejected_batches": 0,
                         "rejected_records": 0, "errors": 0}
        self._log = logs.get("flow-log-shipper")

    # --- the caller's side ---------------------------------------------------------------------------
    def submit(self, fl_id: str, records: list[str], window_start: float, window_end: float, *,
               fields: Sequence[str] | None = None) -> None:
        """Queue one window's records of a flow log for delivery (``fields``: the format's field names)."""
        try:
            fields = tuple(fields) if fields is not None else None
            room = MAX_DELIVERY - MARKER_ROOM
            for i in range(0, len(records), room):  # an oversized window goes as several deliveries
                batch = _Batch(fl_id, list(records[i:i + room]), window_start, window_end, fields)
                self._queue.append(batch)
                self._queued_records += len(batch.records)
            self._shed()
            if self._wake is not None:
                self._wake.set()
        except Exception:
            self.counters["errors"] += 1
            self._log.exception("queueing flow log records failed", flow_log=fl_id)

    async def ship(self, fl_id: str, records: list[str], window_start: float, window_end: float, *,
                   fields: Sequence[str] | None = None) -> bool:
        """``submit``, then deliver what is queued; True when the queue is empty afterwards."""
        self.submit(fl_id, records, window_start, window_end, fields=fields)
        return await self.deliver()

    async def deliver(self) -> bool:
        """Deliver queued batches, oldest first, until one fails in a way a retry may cure. True when
        nothing is left. A call while another delivers returns False at once: that one takes the queue."""
        try:
            self._bind_loop()
            if self._lock.locked():
                return False
            async with self._lock:
                while self._queue:
                    batch = self._queue[0]
                    self._in_flight = batch
                    try:
                        outcome = await self._post(batch)
                    finally:
                        self._in_flight = None
                    if outcome == "retry":
                        self.counters["retries"] += 1
                        return False
                    self._queue.popleft()  # the head: _shed never drops the batch in flight
                    self._queued_records -= len(batch.records)
                return True
        except Exception:
            self.counters["errors"] += 1
            self._log.exception("delivering flow log records failed")
            return False

    async def run(self) -> None:
        """Retry queued deliveries until cancelled."""
        self._bind_loop()
        delay = RETRY_MIN
        while True:
            try:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                if await self.deliver():
                    delay = RETRY_MIN
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the retries
                self.counters["errors"] += 1
                self._log.exception("flow log delivery loop failed")
                await asyncio.sleep(RETRY_MAX)

    def status(self) -> dict:
        return {"connected": self.connected, "queued_batches": len(self._queue),
                "queued_records": self._queued_records, "last_error": self.last_error,
                "pending_skipdata": sum(len(m) for m in self._lost.values()), **self.counters}

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- inside ------------------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a lock and an event serve one event loop
            self._lock, self._wake, self._loop = asyncio.Lock(), asyncio.Event(), loop
            if self._queue:
                self._wake.set()

    def _shed(self) -> None:
        """Drop the oldest batches (never the one in flight, never the newest) while over the bounds."""
        while len(self._queue) > self.max_batches or self._queued_records > self.max_records:
            victim = next((b for b in self._queue if b is not self._in_flight), None)
            if victim is None or victim is self._queue[-1]:
                return
            self._queue.remove(victim)
            self._queued_records -= len(victim.records)
            self.counters["dropped_batches"] += 1
            self.counters["dropped_records"] += len(victim.records)
            if victim.fields is not None:
                lost = self._lost.setdefault(victim.fl_id, {})
                for identity, (start, end) in victim.markers.items():
                    _merge(lost, identity, start, end)
                for identity in flowlog.record_identities(victim.fields, victim.records):
                    _merge(lost, identity, victim.window_start, victim.window_end)
            self._log.warning("flow log delivery queue full: dropped the oldest batch", flow_log=victim.fl_id,
                              records=len(victim.records), queued=len(self._queue))

    async def _post(self, batch: _Batch) -> str:
        """One delivery: "ok", "retry" (keep it) or "rejected" (drop it)."""
        lost = self._lost.pop(batch.fl_id, None)
        if lost and batch.fields is not None:
            for identity, (start, end) in lost.items():
                _merge(batch.markers, identity, start, end)
        elif lost:
            self._lost[batch.fl_id] = lost
        markers = [flowlog.skipdata_record(batch.fields, identity, start, end)
                   for identity, (start, end) in batch.markers.items()] if batch.fields is not None else []
        body = {"records": markers + batch.records, "window_start": batch.window_start,
                "window_end": batch.window_end, "host": self.host_name}
        try:
            response = await self.http.post(f"/v1/flow-logs/{batch.fl_id}/records", json=body)
        except (httpx.HTTPError, OSError) as e:
            return self._unreachable(str(e) or type(e).__name__)
        if response.status_code in (408, 429) or response.status_code >= 500:
            return self._unreachable(f"{response.status_code}: {response.text[:200]}")
        self.connected = True
        if response.is_error:
            self.counters["rejected_batches"] += 1
            self.counters["rejected_records"] += len(batch.records)
            self.last_error = f"{response.status_code}: {response.text[:200]}"
            self._log.warning("control plane refused flow log records; dropped", flow_log=batch.fl_id,
                              status=response.status_code, answer=response.text[:200])
            return "rejected"
        self.counters["delivered_batches"] += 1
        self.counters["delivered_records"] += len(batch.records)
        self.counters["skipdata_markers"] += len(markers)
        return "ok"

    def _unreachable(self, error: str) -> str:
        if self.connected is not False:
            self._log.warning("control plane unreachable; flow log records stay queued", error=error)
        self.connected = False
        self.last_error = error
        return "retry"
