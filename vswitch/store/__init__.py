"""The control plane's durable store: one async key-value interface, two backends.

- ``sqlite:///ABSOLUTE/PATH`` (the default): one file, no daemon. For a control plane on one machine.
- ``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]``: an etcd cluster, for a control plane spanning machines.
  Every key lives under PREFIX (default ``/vpc``), so several deployments can share one etcd.

The model is etcd's, so that code written against one backend behaves the same on the other:

- Keys are ``/``-separated strings, values are bytes; ``range`` returns keys in byte order.
- Revisions are store-wide and strictly increasing. Each committed ``Txn`` that changes something bumps
  the revision once, and every event it causes carries that revision. On etcd they are etcd's own
  revisions, so writes under other prefixes also move them forward: only their order is meaningful.
- Optimistic concurrency: read a record, then commit with a compare on its ``mod_revision``; a
  ``Conflict`` means someone else got there first: read again and retry.
- ``watch`` replays history from a revision, then follows live changes, so a reader can take a
  snapshot with ``range`` at revision R and then ``watch(prefix, R + 1)`` without a gap.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import AsyncIterator, Literal
from urllib.parse import parse_qs, urlsplit


class StoreError(Exception):
    """Base of every error the store raises."""


class Conflict(StoreError):
    """A compare of a ``Txn`` failed: nothing was written."""


class Compacted(StoreError):
    """A watch asked for history that is no longer kept."""


class Unavailable(StoreError):
    """The backend cannot be reached (etcd down or unreachable, SQLite file locked or unopenable).

    A commit that raised it may or may not have been applied: read again before retrying (a retry
    guarded by compares is safe).
    """


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: bytes
    create_revision: int  # revision of the txn that created the key (since it last did not exist)
    mod_revision: int  # revision of the txn that last wrote it: what a compare checks


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    key: str
    value: bytes | None  # None for a delete
    revision: int


@dataclasses.dataclass
class Txn:
    """Compares, then writes, applied atomically: all the writes or (on a failed compare) none."""

    compares: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (key, mod_revision); 0: absent
    puts: dict[str, bytes] = dataclasses.field(default_factory=dict)
    deletes: list[str] = dataclasses.field(default_factory=list)  # deleting a missing key is a no-op


class Store(abc.ABC):
    """The interface both backends implement. Use it as ``async with open_store(url) as store``."""

    @abc.abstractmethod
    async def get(self, key: str) -> Record | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str) -> list[Record]:
        """Every record whose key starts with ``prefix``, sorted by key, as of one revision."""

    @abc.abstractmethod
    async def commit(self, txn: Txn) -> int:
        """Apply ``txn``; return the store revision after it. Raises ``Conflict`` if a compare fails."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The current store revision (0 for a new, empty SQLite store)."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        """Every change under ``prefix`` with revision >= ``start_revision``, in order, then live ones.

        Raises ``Compacted`` if that history is gone and ``Unavailable`` if the backend is lost
        (resume with a new watch from the last revision seen + 1). The iteration ends when the store is
        closed. Close an abandoned watch promptly with ``contextlib.aclosing`` (on etcd it holds a watch
        on the server until closed).
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def check_txn(txn: Txn) -> None:
    """Reject what etcd would reject, on both backends, so they accept the same transactions."""
    for key, rev in txn.compares:
        check_key(key)
        if not isinstance(rev, int) or rev < 0:
            raise ValueError(f"compare on {key!r}: expected mod_revision must be an int >= 0, not {rev!r}")
    for key, value in txn.puts.items():
        check_key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"value of {key!r} must be bytes, not {type(value).__name__}")
    for key in txn.deletes:
        check_key(key)
    both = set(txn.puts).intersection(txn.deletes)
    if both:  # etcd refuses a txn that writes one key twice
        raise ValueError(f"keys both put and deleted in one txn: {', '.join(sorted(both))}")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a key is a non-empty string, not {key!r}")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``; None if there is none.

    Keys compare as bytes (etcd's order, and SQLite's for BLOBs), so a prefix is the interval
    [prefix, prefix_end(prefix)).
    """
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def open_store(url: str) -> Store:
    """Open the store a URL names. Raises ValueError for a URL it cannot use, naming what is wrong."""
    parts = urlsplit(url)
    options = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    if parts.scheme == "sqlite":
        from .sqlite import SqliteStore

        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"{url!r}: a SQLite store is sqlite:///ABSOLUTE/PATH")
        history = options.pop("history", None)
        _no_other_options(url, options)
        if history is None:
            return SqliteStore(parts.path)
        if not history.isdigit() or int(history) < 1:
            raise ValueError(f"{url!r}: history must be a number of revisions >= 1")
        return SqliteStore(parts.path, history=int(history))
    if parts.scheme == "etcd":
        from .etcd import EtcdStore

        _no_other_options(url, options)
        endpoints = [e.strip() for e in parts.netloc.split(",") if e.strip()]
        if not endpoints:
            raise ValueError(f"{url!r}: an etcd store is etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        return EtcdStore(endpoints, prefix=parts.path or "/vpc")
    raise ValueError(f"{url!r}: unknown store scheme {parts.scheme!r} (use sqlite:// or etcd://)")


def _no_other_options(url: str, options: dict) -> None:
    if options:
        raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(options))}")
