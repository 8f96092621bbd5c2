"""The distributed store: etcd v3, through the ``aetcd`` asyncio client.

The interface is etcd's model, so the mapping is direct: ``Txn`` is an etcd transaction (compares on
mod_revision, or version 0 for "absent"; the writes in its success branch; an empty failure branch),
revisions are etcd's, and ``watch`` is etcd's watch with a start revision. Every key is stored under
a prefix (default ``/vpc/``) so that several deployments can share one etcd.

aetcd's high-level calls drop what the store needs (a transaction's header and so its revision; a
range's limit and revision), so reads and transactions use its gRPC stubs and messages directly; its
watcher, which multiplexes every watch over one stream, is used as it is.

With several endpoints, gRPC's pick_first policy connects to the first that answers and moves on
when it fails; any etcd member serves every request (it forwards writes to the leader).
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import AsyncIterator, Iterator

import aetcd
import grpc
from aetcd import rpc

from . import Compacted, Conflict, Event, Record, Store, StoreError, Txn, Unavailable, check_key, check_txn, prefix_end

TIMEOUT = 5.0  # seconds for one request: an etcd without quorum stalls rather than failing
PAGE = 1_000  # keys per range request: a reply must stay under gRPC's 4 MiB message limit

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class EtcdStore(Store):
    def __init__(self, endpoints: list[str], prefix: str = "/vpc", timeout: float = TIMEOUT):
        self.endpoints = endpoints
        self.timeout = timeout
        self._prefix = (prefix.rstrip("/") + "/").encode()
        self._closed = False
        # aetcd builds its gRPC target as f"{host}:{port}"; splitting ours at the last colon rebuilds it.
        host, _, port = _target(endpoints).rpartition(":")
        self._client = aetcd.Client(host, int(port), timeout=timeout)

    # -- the interface

    async def get(self, key: str) -> Record | None:
        check_key(key)
        with self._errors():
            kv = await self._kv()
            reply = await kv.Range(rpc.RangeRequest(key=self._key(key)), timeout=self.timeout)
        return self._record(reply.kvs[0]) if reply.kvs else None

    async def range(self, prefix: str) -> list[Record]:
        start = self._key(prefix)
        end = prefix_end(start)  # never None: the store prefix ends in "/"
        records: list[Record] = []
        revision = 0  # the first page reads the latest revision; the later ones read that same revision
        with self._errors():
            kv = await self._kv()
            while True:
                request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
                reply = await kv.Range(request, timeout=self.timeout)
                records.extend(self._record(item) for item in reply.kvs)
                if not reply.more:
                    return records
                revision = reply.header.revision
                start = reply.kvs[-1].key + b"\0"

    async def commit(self, txn: Txn) -> int:
        check_txn(txn)
        compares = []
        for key, expected in txn.compares:
            if expected == 0:  # version 0 is etcd's "no such key"
                compares.append(rpc.Compare(key=self._key(key), target=rpc.Compare.VERSION,
                                            result=rpc.Compare.EQUAL, version=0))
            else:
                compares.append(rpc.Compare(key=self._key(key), target=rpc.Compare.MOD,
                                            result=rpc.Compare.EQUAL, mod_revision=expected))
        writes = [rpc.RequestOp(request_put=rpc.PutRequest(key=self._key(key), value=value))
                  for key, value in txn.puts.items()]
        writes += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key(key)))
                   for key in dict.fromkeys(txn.deletes)]
        with self._errors():
            kv = await self._kv()
            reply = await kv.Txn(rpc.TxnRequest(compare=compares, success=writes), timeout=self.timeout)
        if not reply.succeeded:  # etcd does not say which compare failed
            raise Conflict(f"a compare failed on {', '.join(key for key, _ in txn.compares)}")
        return reply.header.revision

    async def revision(self) -> int:
        with self._errors():
            kv = await self._kv()
            reply = await kv.Range(rpc.RangeRequest(key=self._prefix, count_only=True), timeout=self.timeout)
        return reply.header.revision

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        key = self._key(prefix)
        with self._errors():
            await self._kv()  # refuses a closed store
            # etcd reads start_revision 0 as "from now"; the interface means "from the beginning".
            watch = await self._client.watch(key, range_end=prefix_end(key), start_revision=max(start_revision, 1))
        try:
            with self._errors():
                async with contextlib.aclosing(aiter(watch)) as events:  # ends when the client closes
                    async for event in events:
                        item = event.kv
                        if event.kind == "PUT":
                            yield Event("put", self._unkey(item.key), item.value, item.mod_revision)
                        else:  # a delete's mod_revision is the revision of the delete
                            yield Event("delete", self._unkey(item.key), None, item.mod_revision)
        finally:
            if not self._closed:  # closing the client has dropped every watch already
                await watch.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.close()

    # -- helpers

    async def _kv(self):
        if self._closed:
            raise StoreError(f"etcd at {','.join(self.endpoints)}: the store is closed")
        await self._client.connect()  # creates the channel and stubs; the connection itself is lazy
        return self._client.kvstub

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _unkey(self, key: bytes) -> str:
        return key[len(self._prefix):].decode()

    def _record(self, item) -> Record:
        return Record(self._unkey(item.key), item.value, item.create_revision, item.mod_revision)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate gRPC's and aetcd's errors into the store's."""
        where = f"etcd at {','.join(self.endpoints)}"
        try:
            yield
        except grpc.aio.AioRpcError as e:
            if e.code() in _UNREACHABLE:
                raise Unavailable(f"{where}: {e.details()}") from None
            if e.code() == grpc.StatusCode.OUT_OF_RANGE:  # a range pinned to a revision compacted meanwhile
                raise Compacted(f"{where}: {e.details()}") from None
            raise StoreError(f"{where}: {e.code().name}: {e.details()}") from None
        except aetcd.RevisionCompactedError as e:
            raise Compacted(f"{where}: history before revision {e.compacted_revision} is compacted") from None
        except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError) as e:
            raise Unavailable(f"{where}: {e}") from None
        except aetcd.ClientError as e:
            raise StoreError(f"{where}: {e}") from None


def _target(endpoints: list[str]) -> str:
    """The gRPC target for the endpoints: ``HOST:PORT`` for one, ``ipv4:A:P,B:P`` (or ipv6) for several."""
    families = set()
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {endpoint!r} must be HOST:PORT")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            families.add(None)  # a name: gRPC resolves it, but only as the sole endpoint
    if len(endpoints) == 1:
        return endpoints[0]
    if None in families or len(families) > 1:  # gRPC lists several addresses only as literals of one family
        raise ValueError(f"several etcd endpoints must all be IPv4 or all IPv6 addresses: {','.join(endpoints)}")
    return f"ipv{families.pop()}:{','.join(endpoints)}"
