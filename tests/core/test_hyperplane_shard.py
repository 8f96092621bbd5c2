"""vswitch.hyperplane_shard: shards are deterministic, distinct, move minimally when the fleet changes;
a flow's owners fail over to the old secondary and spread evenly; overlap statistics match the
reference's figures for 100 nodes and shards of 5."""

import collections
import random

import pytest
from hypothesis import given, settings, strategies as st

import vswitch.hyperplane_shard as hs
from helpers import imported_modules
from vswitch.hyperplane_shard import expected_overlap, flow_hash, overlap, owners, rank, shard

FLEET = [f"hp-{i:02d}" for i in range(20)]
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
fleets = st.lists(names, min_size=1, max_size=30, unique=True)
resources = st.text(min_size=1, max_size=24)
hashes = st.integers(0, 2**64 - 1)


def test_pure_core_imports_no_io():
    imported = imported_modules(hs)
    assert not imported & {"asyncio", "socket", "fcntl", "os", "time", "random"}


def test_stable_values_pinned():
    """The encodings are part of the contract: every node, process and version must agree."""
    assert flow_hash(6, 0x0A000104, 0xCB007101, 40000, 443, 7) == 16552164832435847562
    nodes = shard("nat-0a1b2c3d4e5f60718", FLEET, 5)
    assert nodes == ["hp-01", "hp-14", "hp-10", "hp-02", "hp-12"]
    assert owners(nodes, 12345, set(FLEET)) == ("hp-14", "hp-01")


@settings(max_examples=200, deadline=None)
@given(resources, fleets, st.integers(0, 8), st.randoms(use_true_random=False))
def test_deterministic_distinct_and_order_free(resource, nodes, k, rnd):
    chosen = shard(resource, nodes, k)
    assert len(chosen) == min(k, len(nodes)) == len(set(chosen))
    assert set(chosen) <= set(nodes)
    shuffled = nodes[:]
    rnd.shuffle(shuffled)
    assert shard(resource, shuffled + shuffled[:2], k) == chosen  # input order and duplicates do not matter
    assert shard(resource, nodes, k + 1)[:k] == chosen  # order is a preference


def test_refuses_a_negative_size_and_takes_a_small_fleet_whole():
    with pytest.raises(ValueError):
        shard("r", FLEET, -1)
    assert sorted(shard("r", FLEET[:3], 5)) == FLEET[:3]
    assert shard("r", [], 5) == []


@settings(max_examples=300, deadline=None)
@given(resources, fleets, names, st.integers(1, 6))
def test_adding_a_node_moves_at_most_one_member(resource, nodes, new, k):
    if new in nodes:
        return
    before, after = shard(resource, nodes, k), shard(resource, nodes + [new], k)
    if new not in after:
        assert after == before
    else:
        # The new node took the place of at most one member (the last, if the shard was full); the
        # others kept their relative order.
        assert [n for n in after if n != new] == before[:len(after) - 1]


@settings(max_examples=300, deadline=None)
@given(resources, fleets, st.integers(1, 6), st.data())
def test_removing_a_node_moves_only_its_place(resource, nodes, k, data):
    gone = data.draw(st.sampled_from(nodes))
    rest = [n for n in nodes if n != gone]
    before, after = shard(resource, nodes, k), shard(resource, rest, k)
    if gone not in before:
        assert after == before
    else:
        kept = [n for n in before if n != gone]
        assert after[:len(kept)] == kept  # survivors keep their places, the next-ranked node joins last
        assert len(after) == min(k, len(rest))


def test_few_shards_change_when_the_fleet_grows():
    """Adding one node to 20 changes about k/21 of the shards, never more than one member each."""
    changed = sum(shard(f"nat-{i}", FLEET, 5) != shard(f"nat-{i}", FLEET + ["hp-20"], 5) for i in range(2000))
    assert abs(changed / 2000 - 5 / 21) < 0.04


# --- owners ----------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=1, max_size=8, unique=True), hashes, st.data())
def test_owners_are_the_top_two_live_nodes(nodes, h, data):
    alive = set(data.draw(st.lists(st.sampled_from(nodes), unique=True)))
    primary, secondary = owners(nodes, h, alive)
    live_ranked = [n for n in rank(h, nodes) if n in alive]
    assert [primary, secondary] == (live_ranked + [None, None])[:2]


@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=2, max_size=8, unique=True), hashes, st.data())
def test_failover_makes_the_old_secondary_primary(nodes, h, data):
    alive = set(nodes)
    primary, secondary = owners(nodes, h, alive)
    assert primary != secondary and secondary is not None
    new_primary, new_secondary = owners(nodes, h, alive - {primary})
    assert new_primary == secondary
    assert new_secondary not in (primary, secondary)
    # A node that is neither owner dies: nothing moves.
    bystander = data.draw(st.sampled_from(nodes))
    if bystander not in (primary, secondary):
        assert owners(nodes, h, alive - {bystander}) == (primary, secondary)
    # The primary comes back: it is primary again.
    assert owners(nodes, h, alive) == (primary, secondary)


def test_owners_with_one_or_no_live_node():
    nodes = ["a", "b", "c"]
    assert owners(nodes, 7, {"b"}) == ("b", None)
    assert owners(nodes, 7, set()) == (None, None)
    assert owners(nodes, 7, {"z"}) == (None, None)  # alive but not in the shard


def chi_square(counts, n):
    expected = n / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_flows_spread_evenly_over_a_shard():
    """10,000 flows over a 5-node shard: primaries (4 degrees of freedom) and ordered (primary,
    secondary) pairs (19) pass a chi-square test far below the 0.1 % critical values (18.5, 43.8)."""
    rng = random.Random(5)
    nodes = shard("nlb-0123456789abcdef0", FLEET, 5)
    alive = set(nodes)
    prim, pairs = collections.Counter(), collections.Counter()
    n = 10_000
    for _ in range(n):
        h = flow_hash(6, rng.getrandbits(32), 0xCB007101, rng.randrange(1024, 65536), 443)
        p, s = owners(nodes, h, alive)
        prim[p] += 1
        pairs[p, s] += 1
    assert len(prim) == 5 and len(pairs) == 20
    assert chi_square(list(prim.values()), n) < 18.5
    assert chi_square(list(pairs.values()), n) < 43.8


def test_failover_spreads_a_dead_nodes_flows_over_the_rest():
    rng = random.Random(6)
    nodes = shard("nat-x", FLEET, 5)
    dead = nodes[0]
    moved = collections.Counter()
    for _ in range(5000):
        h = rng.getrandbits(64)
        if owners(nodes, h, set(nodes))[0] == dead:
            moved[owners(nodes, h, set(nodes) - {dead})[0]] += 1
    total = sum(moved.values())
    assert len(moved) == 4 and chi_square(list(moved.values()), total) < 16.3  # 3 dof, 0.1 %


def test_resources_spread_evenly_over_the_fleet():
    per_node = collections.Counter(n for i in range(4000) for n in shard(f"nat-{i:05d}", FLEET, 5))
    assert len(per_node) == 20
    assert chi_square(list(per_node.values()), 20_000) < 43.8  # 19 dof, 0.1 %


def test_flow_hash_tells_every_field_apart():
    base = (6, 0x0A000104, 0xCB007101, 40000, 443, 0)
    seen = {flow_hash(*base)}
    for i in range(6):
        other = list(base)
        other[i] += 1
        seen.add(flow_hash(*other))
    assert len(seen) == 7
    assert flow_hash(6, 1, 2, 3, 4) != flow_hash(6, 2, 1, 4, 3)  # oriented, not symmetric
    assert 0 <= flow_hash(17, (1 << 128) | 5, 2, 3, 4, 2**64 - 1) < 2**64  # IPv6 keys fit


# --- overlap ---------------------------------------------------------------------------------------

def test_expected_overlap_reproduces_the_reference_figures():
    p = expected_overlap(100, 5)
    assert round(p[0] * 100, 2) == 76.96
    assert round(p[1] * 100, 2) == 21.14
    assert round(p[2] * 100, 2) == 1.84
    assert p[5] == 1 / 75_287_520
    assert abs(sum(p.values()) - 1) < 1e-12
    with pytest.raises(ValueError):
        expected_overlap(3, 5)


def test_overlap_counts_pairs():
    stats = overlap({"a": ["n1", "n2"], "b": ["n2", "n1"], "c": ["n2", "n3"], "d": ["n4", "n5"]})
    assert stats.pairs == 6
    assert stats.by_shared == {0: 3, 1: 2, 2: 1}
    assert stats.sharing_all == 1 and stats.sharing_any == 3 and stats.max_shared == 2
    assert stats.per_node == {"n1": 2, "n2": 3, "n3": 1, "n4": 1, "n5": 1}
    assert stats.fraction(0) == 0.5
    assert overlap({}).pairs == 0 and overlap({}).fraction(0) == 0.0
    assert stats.as_dict()["by_shared"] == {0: 3, 1: 2, 2: 1}


def test_shards_of_a_100_node_fleet_overlap_like_random_shards():
    fleet = [f"hp-{i:03d}" for i in range(100)]
    stats = overlap({f"nat-{i:05d}": shard(f"nat-{i:05d}", fleet, 5) for i in range(800)})
    p = expected_overlap(100, 5)
    for j in (0, 1, 2):
        assert abs(stats.fraction(j) - p[j]) < 0.01, (j, stats.fraction(j), p[j])
    assert stats.sharing_all == 0
