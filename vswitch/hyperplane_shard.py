"""Shuffle sharding of Hyperplane nodes, and which nodes of a shard hold a flow.

Two questions, both answered by rendezvous (highest random weight, HRW) hashing — every candidate gets a
pseudo-random score from (key, candidate) and the candidates are ranked by score, highest first:

  shard(resource_id, nodes, k)          the k nodes of the fleet that serve one resource (a NAT gateway,
                                        a load balancer): its *shard*. Slow path, on configuration.
  owners(shard, flow_hash, alive)       the flow's primary and secondary among the shard's live nodes.
                                        Per new flow (or per packet, if the shell does not cache it).

Rendezvous needs no table and no coordination: every node computes the same answer from the same inputs,
and the answer moves as little as possible when the inputs change.
- A node added to the fleet enters a shard only where it outranks the shard's last member, which it then
  replaces: at most one member of each shard changes (and k/n of the shards change at all).
- A node removed from the fleet changes only the shards it was in: the next-ranked node takes its
  place, the others stay (and keep their order).
- ``shard(r, nodes, k)`` is a prefix of ``shard(r, nodes, k + 1)``: the order is a preference.
- ``owners``: the primary is the live shard node of highest score for the flow, the secondary the next.
  When the primary dies the old secondary becomes primary (it was second; now nothing outranks it),
  and the next-ranked live node becomes the secondary — no election, every node agrees by computing.
  A node that comes back takes its flows back as primary; its state is whatever the replication
  gave it meanwhile (the shell's concern).

Hashes are stable across processes, machines and Python versions: BLAKE2b (``hashlib``), never the
built-in ``hash()`` (salted per process for str). Encodings, all big-endian:
  shard score    BLAKE2b-64 of  len(resource) u32 | resource | node   (UTF-8; the length prefix keeps
                                                                      two (resource, node) pairs apart)
  flow_hash      BLAKE2b-64 of  proto u8 | src u136 | dst u136 | sport u16 | dport u16 | extra u64
                 (addresses as 17-byte ints: IPv4 ints and the V6-tagged keys of ``addresses.key`` alike)
  node seed      BLAKE2b-64 of the UTF-8 node name (cached)
  flow score     fmix64(flow_hash XOR node seed)   (MurmurHash3's 64-bit finaliser)
The flow score avoids a BLAKE2b call per node per flow: one integer mix each (``owners`` over a 5-node
shard ≈4 µs on CPython 3.11, ``flow_hash`` ≈1.3 µs; with BLAKE2b per node the scores alone would cost
≈6 µs). fmix64 is a bijection with full avalanche, so distinct seeds give independent-looking scores;
the tests check the spread over a shard is uniform. The shell computes a flow's owners once, on its
first packet, and keeps them with the flow.

Which tuple to hash is the caller's choice, and it must be one both directions of a flow can compute:
- NAT gateway: replies carry only the outside tuple, a non-first fragment has no ports at all, and
  distinct source ports per destination need one allocator per destination: key a NAT flow by its
  remote address, ``flow_hash(proto, remote, 0, 0, 0)`` — outbound packets carry it as destination,
  replies and their fragments as source, ICMP errors quote it. See ``natgw.py``.
- Load balancer: with client IP preservation the client's address and port appear in both directions;
  the target is chosen by a separate hash (``nlb.py``).

Overlap (``overlap``) is for ``vpc hyperplane shards``: how many pairs of resources share all, some or
none of their nodes, against ``expected_overlap(n, k)``, the chance for two random k-node shards of an
n-node fleet to share j nodes (hypergeometric): C(k, j)·C(n−k, k−j) / C(n, k). For n = 100, k = 5:
76.96 % share none, 21.14 % one, 1.84 % two, and all five 1 / C(100, 5) = 0.0000013 %.

Pure: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import struct
from typing import Collection, Iterable, Mapping, Sequence

_M64 = (1 << 64) - 1
_FLOW = struct.Struct("!B17s17sHHQ")


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _shard_score(resource: bytes, node: str) -> int:
    return _h64(len(resource).to_bytes(4, "big") + resource + node.encode())


@functools.lru_cache(maxsize=4096)
def node_seed(name: str) -> int:
    """The 64-bit seed of a candidate (node name, target id) for flow scores."""
    return _h64(name.encode())


def _fmix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


def score(key: int, name: str) -> int:
    """The rendezvous score of candidate ``name`` for a 64-bit ``key`` (a flow hash): higher wins."""
    return _fmix64(key ^ node_seed(name))


def rank(key: int, names: Iterable[str]) -> list[str]:
    """``names`` by preference for ``key``, best first (ties, which need equal 64-bit scores, by name)."""
    return sorted(names, key=lambda n: (score(key, n), n), reverse=True)


def best(key: int, names: Iterable[str]) -> str | None:
    """The highest-scoring of ``names`` for ``key`` (``rank(key, names)[0]``), None if there is none."""
    top, top_score = None, (-1, "")
    for name in names:
        s = (score(key, name), name)
        if s > top_score:
            top, top_score = name, s
    return top


def shard(resource_id: str, nodes: Iterable[str], k: int) -> list[str]:
    """The ``k`` nodes of ``nodes`` that serve ``resource_id``, best first. Duplicate names count once;
    a fleet smaller than ``k`` gives all its nodes (a lab with three nodes and shards of five)."""
    if k < 0:
        raise ValueError(f"shard size must be at least 0, got {k}")
    resource = resource_id.encode()
    scored = sorted(((_shard_score(resource, node), node) for node in set(nodes)), reverse=True)
    return [node for _, node in scored[:k]]


def flow_hash(proto: int, src: int, dst: int, sport: int, dport: int, extra: int = 0) -> int:
    """A stable 64-bit hash of a flow's tuple, as given (not symmetric: hash a tuple both directions
    know). ``extra``: anything else that tells flows apart, < 2^64 (the NLB: a TCP SYN's sequence number)."""
    return _h64(_FLOW.pack(proto, src.to_bytes(17, "big"), dst.to_bytes(17, "big"), sport, dport, extra))


def owners(shard_nodes: Sequence[str], flow_hash: int, alive: Collection[str]) -> tuple[str | None, str | None]:
    """(primary, secondary) of a flow: the two live nodes of the shard ranked highest for ``flow_hash``.
    (node, None) when one node of the shard is alive, (None, None) when none is."""
    first = second = None
    first_score = second_score = (-1, "")
    for node in shard_nodes:
        if node not in alive:
            continue
        s = (_fmix64(flow_hash ^ node_seed(node)), node)
        if s > first_score:
            second, second_score = first, first_score
            first, first_score = node, s
        elif s > second_score and node != first:
            second, second_score = node, s
    return first, second


# --- overlap -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Overlap:
    """How the shards of resources overlap, over every pair of resources."""

    resources: int
    pairs: int  # resources × (resources − 1) / 2
    by_shared: dict[int, int]  # number of nodes in common → pairs with that many (0 included)
    sharing_any: int  # pairs with at least one node in common
    sharing_all: int  # pairs whose shards are the same set of nodes
    per_node: dict[str, int]  # node → resources it serves
    max_shared: int  # the most nodes any pair has in common

    def fraction(self, shared: int) -> float:
        return self.by_shared.get(shared, 0) / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def overlap(assignments: Mapping[str, Sequence[str]]) -> Overlap:
    """Overlap statistics of ``assignments`` (resource → its shard's nodes). Compares every pair:
    O(R² · k) for R resources, about a second for 1,500 resources — a status command, not a hot path."""
    shards = [frozenset(nodes) for nodes in assignments.values()]
    by_shared: dict[int, int] = {}
    sharing_all = 0
    for a, b in itertools.combinations(shards, 2):
        common = len(a & b)
        by_shared[common] = by_shared.get(common, 0) + 1
        if a == b:
            sharing_all += 1
    per_node: dict[str, int] = {}
    for nodes in shards:
        for node in nodes:
            per_node[node] = per_node.get(node, 0) + 1
    pairs = len(shards) * (len(shards) - 1) // 2
    return Overlap(len(shards), pairs, dict(sorted(by_shared.items())), pairs - by_shared.get(0, 0),
                   sharing_all, dict(sorted(per_node.items())), max(by_shared, default=0))


def expected_overlap(n: int, k: int) -> dict[int, float]:
    """The chance that two independent random k-node shards of an n-node fleet share j nodes, per j."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 ≤ k ≤ n, got n={n} k={k}")
    total = math.comb(n, k)
    return {j: math.comb(k, j) * math.comb(n - k, k - j) / total for j in range(k + 1)}
