"""The durable store (vswitch.store): one suite, run against both backends.

Every behavioural test runs twice, on SQLite and on etcd. The etcd is a real one (Debian's etcd 3.4,
which scripts/setup installs), started once per session on free loopback ports by the ``etcd_endpoint``
fixture (conftest.py); each test gets a key prefix of its own on it, or a SQLite file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import aetcd
import pytest

from vswitch.store import Compacted, Conflict, Event, StoreError, Txn, Unavailable, open_store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def url(backend, request, tmp_path) -> str:
    """A fresh, empty store. Appending to it names another, independent one."""
    if backend == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    return f"etcd://{request.getfixturevalue('etcd_endpoint')}/test-{uuid.uuid4().hex[:12]}"


def run(url: str, scenario, timeout: float = 10) -> None:
    """Run ``scenario(store)`` on a freshly opened store, in a new event loop."""

    async def main():
        async with open_store(url) as store:
            await asyncio.wait_for(scenario(store), timeout)

    asyncio.run(main())


async def take(events, n: int, timeout: float = 5) -> list[Event]:
    return [await asyncio.wait_for(anext(events), timeout) for _ in range(n)]


def put(key: str, value: bytes, rev: int) -> Event:
    return Event("put", key, value, rev)


def delete(key: str, rev: int) -> Event:
    return Event("delete", key, None, rev)


def test_put_get_and_range_in_key_order(url):
    async def scenario(store):
        assert await store.get("vpcs/1") is None
        assert await store.range("") == []
        rev = await store.commit(Txn(puts={"vpcs/2": b"two", "vpcs/1": b"one", "vpcs/10": b"ten",
                                           "vpcs/\u00e9": b"e", "vpcx": b"x", "subnets/1": b"s"}))
        one = await store.get("vpcs/1")
        assert (one.key, one.value, one.create_revision, one.mod_revision) == ("vpcs/1", b"one", rev, rev)
        assert [r.key for r in await store.range("vpcs/")] == ["vpcs/1", "vpcs/10", "vpcs/2", "vpcs/\u00e9"]
        assert [r.key for r in await store.range("vpc")] == ["vpcs/1", "vpcs/10", "vpcs/2", "vpcs/\u00e9", "vpcx"]
        assert [r.key for r in await store.range("")][0] == "subnets/1"
        assert await store.range("vpcs/3") == []
        assert await store.get("vpcs") is None  # a prefix of keys is not a key

    run(url, scenario)


def test_stores_sharing_a_backend_are_isolated(url):
    # On etcd the second store's prefix extends the first's (/test-X and /test-X-2): still disjoint.
    async def scenario(store):
        async with open_store(url + "-2") as other:
            await store.commit(Txn(puts={"a": b"1"}))
            await other.commit(Txn(puts={"a": b"2", "b": b"3"}))
            assert [(r.key, r.value) for r in await store.range("")] == [("a", b"1")]
            assert [(r.key, r.value) for r in await other.range("")] == [("a", b"2"), ("b", b"3")]

    run(url, scenario)


def test_revisions_increase_once_per_txn(url, backend):
    async def scenario(store):
        start = await store.revision()
        if backend == "sqlite":
            assert start == 0
        r1 = await store.commit(Txn(puts={"a": b"1", "b": b"1"}))
        assert r1 > start and await store.revision() == r1
        r2 = await store.commit(Txn(puts={"a": b"2"}))
        assert r2 > r1
        a = await store.get("a")
        assert (a.create_revision, a.mod_revision) == (r1, r2)
        assert (await store.get("b")).mod_revision == r1
        assert await store.commit(Txn(deletes=["missing"])) == r2  # no change, no new revision
        assert await store.commit(Txn()) == r2
        r3 = await store.commit(Txn(puts={"a": b"3"}, deletes=["b", "missing"]))
        async with contextlib.aclosing(store.watch("", r1)) as events:
            assert await take(events, 5) == [put("a", b"1", r1), put("b", b"1", r1), put("a", b"2", r2),
                                             put("a", b"3", r3), delete("b", r3)]

    run(url, scenario)


def test_compares_and_a_conflict_writes_nothing(url):
    async def scenario(store):
        r1 = await store.commit(Txn(compares=[("k", 0)], puts={"k": b"1"}))  # create only if absent
        with pytest.raises(Conflict):
            await store.commit(Txn(compares=[("k", 0)], puts={"k": b"again"}))
        r2 = await store.commit(Txn(compares=[("k", r1)], puts={"k": b"2", "other": b"x"}))
        before = await store.range("")
        for stale in ([("k", r1)], [("k", r2), ("nope", 5)], [("k", r2), ("other", 0)]):
            with pytest.raises(Conflict):
                await store.commit(Txn(compares=stale, puts={"k": b"3", "new": b"n"}, deletes=["other"]))
        assert await store.range("") == before
        assert await store.revision() == r2
        assert await store.commit(Txn(compares=[("k", r2), ("other", r2), ("nope", 0)], deletes=["k"])) > r2

    run(url, scenario)


def test_invalid_txns_are_refused_before_writing(url):
    async def scenario(store):
        with pytest.raises(ValueError, match="both put and deleted"):
            await store.commit(Txn(puts={"a": b"1"}, deletes=["a"]))
        with pytest.raises(TypeError, match="bytes"):
            await store.commit(Txn(puts={"a": "text"}))
        with pytest.raises(ValueError, match="non-empty"):
            await store.commit(Txn(puts={"": b"1"}))
        assert await store.range("") == []

    run(url, scenario)


def test_multi_key_txns_are_atomic_to_concurrent_readers(url):
    # Two accounts, many concurrent transfers: every read, of either kind, sees the total intact.
    async def scenario(store):
        await store.commit(Txn(puts={"acct/a": b"50", "acct/b": b"50"}))

        async def transfer(amount: int):
            while True:
                a, b = await store.range("acct/")
                try:
                    return await store.commit(Txn(compares=[(a.key, a.mod_revision), (b.key, b.mod_revision)],
                                                  puts={a.key: b"%d" % (int(a.value) - amount),
                                                        b.key: b"%d" % (int(b.value) + amount)}))
                except Conflict:
                    continue

        async def audit():
            for _ in range(30):
                assert sum(int(r.value) for r in await store.range("acct/")) == 100
                await asyncio.sleep(0)

        await asyncio.gather(audit(), *(transfer(n % 7 - 3) for n in range(10)))
        assert sum(int(r.value) for r in await store.range("acct/")) == 100

    run(url, scenario)


def test_deletes(url):
    async def scenario(store):
        r1 = await store.commit(Txn(puts={"a": b"1", "b": b"2"}))
        r2 = await store.commit(Txn(deletes=["a", "a"]))
        assert await store.get("a") is None
        assert [r.key for r in await store.range("")] == ["b"]
        r3 = await store.commit(Txn(compares=[("a", 0)], puts={"a": b"again"}))
        assert (await store.get("a")).create_revision == r3  # a new life: not r1
        async with contextlib.aclosing(store.watch("", r2)) as events:
            assert await take(events, 2) == [delete("a", r2), put("a", b"again", r3)]
        assert r1 < r2 < r3

    run(url, scenario)


def test_watch_replays_history_then_follows_live_changes_under_its_prefix(url):
    async def scenario(store):
        r1 = await store.commit(Txn(puts={"w/a": b"1", "w/b": b"1"}))
        await store.commit(Txn(puts={"other/x": b"x", "wx": b"not under w/"}))
        r3 = await store.commit(Txn(deletes=["w/a"]))
        r4 = await store.commit(Txn(puts={"w/b": b"2"}))
        async with contextlib.aclosing(store.watch("w/", r1)) as events:
            assert await take(events, 4) == [put("w/a", b"1", r1), put("w/b", b"1", r1),
                                             delete("w/a", r3), put("w/b", b"2", r4)]
            r5 = await store.commit(Txn(puts={"w/c": b"3", "other/y": b"y"}))
            await store.commit(Txn(puts={"other/z": b"z"}))
            r7 = await store.commit(Txn(deletes=["w/b", "other/x"]))
            r8 = await store.commit(Txn(puts={"w/d": b"4"}))
            assert await take(events, 3) == [put("w/c", b"3", r5), delete("w/b", r7), put("w/d", b"4", r8)]
        async with contextlib.aclosing(store.watch("w/", r4)) as events:  # a later start skips the rest
            assert await take(events, 2) == [put("w/b", b"2", r4), put("w/c", b"3", r5)]
        async with contextlib.aclosing(store.watch("w/", r8 + 1)) as events:  # from now: live only
            r9 = await store.commit(Txn(puts={"w/e": b"5"}))
            assert await take(events, 1) == [put("w/e", b"5", r9)]

    run(url, scenario)


def test_watch_sees_changes_made_through_another_store(url):
    # For SQLite the other store is another connection, as another process would have: only the
    # watcher's poll of the log can see its commits.
    async def scenario(store):
        async with open_store(url) as other, contextlib.aclosing(store.watch("", 1)) as events:
            mine = await store.commit(Txn(puts={"k": b"mine"}))
            assert await take(events, 1) == [put("k", b"mine", mine)]  # caught up: next, it waits
            theirs = await other.commit(Txn(puts={"k": b"theirs"}))
            assert await take(events, 1, timeout=3) == [put("k", b"theirs", theirs)]

    run(url, scenario)


def test_closing_the_store_ends_its_watches(url):
    async def main():
        store = open_store(url)
        seen = []

        async def follow():
            async for event in store.watch("", 1):
                seen.append(event)

        rev = await store.commit(Txn(puts={"k": b"v"}))
        task = asyncio.create_task(follow())
        while not seen:
            await asyncio.sleep(0.01)
        await store.close()
        await asyncio.wait_for(task, 3)  # ended, without an error
        assert seen == [put("k", b"v", rev)]
        with pytest.raises(StoreError, match="closed"):
            await store.get("k")

    asyncio.run(main())


def test_watching_compacted_history_raises_compacted(url, backend):
    if backend == "sqlite":
        url += "?history=3"  # the log keeps only the last 3 revisions

    async def scenario(store):
        revs = [await store.commit(Txn(puts={"k": b"%d" % i})) for i in range(6)]
        if backend == "etcd":
            host, _, port = url.removeprefix("etcd://").split("/")[0].rpartition(":")
            async with aetcd.Client(host, int(port)) as client:
                await client.compact(revs[3])
        with pytest.raises(Compacted):
            async with contextlib.aclosing(store.watch("", revs[2])) as events:
                await take(events, 1)
        async with contextlib.aclosing(store.watch("", revs[3])) as events:
            assert await take(events, 3) == [put("k", b"%d" % i, revs[i]) for i in (3, 4, 5)]

    run(url, scenario)


WRITER = """
import asyncio, sys
from vswitch.store import Txn, open_store

async def main():
    async with open_store(sys.argv[1]) as store:
        i = len(await store.range("a/"))  # carry on where the last writer was killed
        while True:
            rev = await store.commit(Txn(puts={f"a/{i:06}": b"%d" % i, f"b/{i:06}": b"%d" % i, "last": b"%d" % i}))
            print(i, rev, flush=True)
            i += 1

asyncio.run(main())
"""


def test_every_returned_commit_survives_kill_9_and_none_is_partial(url):
    confirmed = {}  # txn number -> the revision the writer was told
    for _ in range(5):
        with subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=REPO, stdout=subprocess.PIPE,
                              text=True) as writer:
            printed = []
            try:
                for line in writer.stdout:
                    printed.append(line)
                    if len(printed) == 20:
                        break
                time.sleep(random.uniform(0, 0.03))  # the writer commits flat out: land somewhere inside one
            finally:
                os.kill(writer.pid, signal.SIGKILL)
            printed += writer.stdout.readlines()  # what it had printed before dying
        assert len(printed) >= 20, f"the writer exited early with status {writer.returncode}"
        confirmed.update((int(i), int(rev)) for i, rev in (line.split() for line in printed if line.endswith("\n")))

        async def scenario(store):
            a, b = await store.range("a/"), await store.range("b/")
            for i, rev in confirmed.items():
                assert (a[i].value, a[i].mod_revision) == (b"%d" % i, rev)
            assert len(a) == len(b)  # a/i and b/i are written by one txn: both or neither
            for x, y in zip(a, b):
                assert (x.key[2:], x.value, x.mod_revision) == (y.key[2:], y.value, y.mod_revision)
            assert [r.key for r in a] == [f"a/{i:06}" for i in range(len(a))]
            assert (await store.get("last")).value == b"%d" % (len(a) - 1)
            assert await store.revision() >= max(confirmed.values())

        run(url, scenario)


def test_concurrent_read_modify_write_with_retries_counts_right(url):
    # Half the writers go through a second store: on SQLite, a second connection competing for the file.
    async def scenario(store):
        conflicts = 0

        async def increment(through):
            nonlocal conflicts
            while True:
                record = await through.get("counter")
                value, seen = (int(record.value), record.mod_revision) if record else (0, 0)
                try:
                    return await through.commit(Txn(compares=[("counter", seen)],
                                                    puts={"counter": b"%d" % (value + 1)}))
                except Conflict:
                    conflicts += 1

        async with open_store(url) as other:
            revs = await asyncio.gather(*(increment(store if n % 2 else other) for n in range(20)))
        assert (await store.get("counter")).value == b"20"
        assert len(set(revs)) == 20
        assert conflicts > 0  # they did collide: the compares, not luck, kept the count

    run(url, scenario, timeout=20)


def test_an_unreachable_backend_is_unavailable(backend, tmp_path):
    if backend == "sqlite":
        with pytest.raises(Unavailable, match="unable to open"):
            open_store(f"sqlite://{tmp_path}/no/such/dir/store.db")
        return

    async def scenario(store):
        with pytest.raises(Unavailable):
            await store.get("k")
        with pytest.raises(Unavailable):
            await store.commit(Txn(puts={"k": b"v"}))
        with pytest.raises(Unavailable):
            async for _ in store.watch("", 1):
                pass

    run(f"etcd://127.0.0.1:{free_port()}", scenario)


def test_etcd_with_several_endpoints_uses_one_that_answers(etcd_endpoint):
    async def scenario(store):
        rev = await store.commit(Txn(puts={"k": b"v"}))
        assert (await store.get("k")).mod_revision == rev

    run(f"etcd://127.0.0.1:{free_port()},{etcd_endpoint}/test-{uuid.uuid4().hex[:12]}", scenario)


@pytest.mark.parametrize("url, problem", [
    ("redis://localhost:6379", "unknown store scheme 'redis'"),
    ("sqlite://relative/path.db", "sqlite:///ABSOLUTE/PATH"),
    ("sqlite:///tmp/x.db?history=0", "history"),
    ("sqlite:///tmp/x.db?colour=blue", "unknown option"),
    ("etcd:///vpc", "etcd://HOST:PORT"),
    ("etcd://127.0.0.1:99999", "HOST:PORT"),
    ("etcd://etcd-1:2379,etcd-2:2379", "must all be IPv4 or all IPv6"),
])
def test_a_url_the_store_cannot_use_is_a_value_error_that_says_why(url, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        open_store(url)
