"""vswitch.mapping: the daemon's table (MappingService), a host's cache (MappingCache), and both wired."""

import pytest
from hypothesis import given, settings, strategies as st

from vswitch import addresses
from vswitch.mapping import Mapping, MappingCache, MappingService, ProtocolError, decode, encode

ENI_A = "eni-00000000000000aa"
ENI_B = "eni-00000000000000bb"
ENI_C = "eni-00000000000000cc"
HOST_A, HOST_B, HOST_C = "198.18.0.11", "198.18.0.12", "198.18.0.13"


def put(vni, addr, host, eni):
    return {"op": "put", "vni": vni, "addr": addr, "host": host, "eni": eni}


def demo_service():
    return MappingService([
        (1, "10.0.1.4", HOST_A, 0xAA),
        (1, "10.0.1.10", HOST_B, 0xBB),
        (2, "10.0.1.4", HOST_C, 0xCC),
    ])


# --- wire format ------------------------------------------------------------------------------------

def test_encode_is_one_json_line():
    line = encode({"op": "query", "vni": 1, "addr": "10.0.1.5"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == {"op": "query", "vni": 1, "addr": "10.0.1.5"}
    assert decode(line.rstrip()) == {"op": "query", "vni": 1, "addr": "10.0.1.5"}


@pytest.mark.parametrize("line, message", [
    (b"", "not JSON"),
    (b"{op: 1}", "not JSON"),
    (b'{"op": "ping"', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "JSON object with a string 'op'"),
    (b'"ping"', "JSON object with a string 'op'"),
    (b"42", "JSON object with a string 'op'"),
    (b"null", "JSON object with a string 'op'"),
    (b"{}", "JSON object with a string 'op'"),
    (b'{"op": 1}', "JSON object with a string 'op'"),
    (b'{"op": null}', "JSON object with a string 'op'"),
])
def test_decode_rejects(line, message):
    with pytest.raises(ProtocolError, match=message):
        decode(line)
    assert issubclass(ProtocolError, ValueError)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=60))
def test_decode_random_bytes_raise_only_protocol_error(data):
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert isinstance(message, dict) and isinstance(message["op"], str)


# --- MappingService ---------------------------------------------------------------------------------

def test_mapping_value():
    m = Mapping.of(HOST_A, 5)
    assert m == Mapping(HOST_A, 5, (HOST_A, 6081))
    assert Mapping.of(HOST_A, 5, 7000).underlay == (HOST_A, 7000)


def test_subscribe_list_gets_snapshots_of_those_vnis():
    s = demo_service()
    out = s.handle("h1", {"op": "subscribe", "vnis": [1, 3]})
    assert out == [
        ("h1", {"op": "snapshot", "vni": 1, "entries": [["10.0.1.4", HOST_A, ENI_A], ["10.0.1.10", HOST_B, ENI_B]]}),
        ("h1", {"op": "snapshot", "vni": 3, "entries": []}),
    ]
    assert s.subscribers == {"h1": {1, 3}}


def test_subscribe_star_gets_every_vni():
    s = demo_service()
    out = s.handle("edge", {"op": "subscribe", "vnis": "*"})
    assert [(c, m["vni"]) for c, m in out] == [("edge", 1), ("edge", 2)]
    assert out[1][1]["entries"] == [["10.0.1.4", HOST_C, ENI_C]]
    assert s.subscribers == {"edge": None}


def test_subscribe_again_replaces_the_subscription():
    s = demo_service()
    s.handle("h", {"op": "subscribe", "vnis": [1]})
    s.handle("h", {"op": "subscribe", "vnis": [2]})
    assert s.put(1, "10.0.1.20", HOST_A, 1) == []
    assert s.put(2, "10.0.1.20", HOST_A, 1) == [("h", {"op": "set", "vni": 2, "addr": "10.0.1.20",
                                                         "host": HOST_A, "eni": addresses.eni_id(1)})]


def test_put_pushes_to_that_vni_and_star_subscribers_only():
    s = demo_service()
    s.handle("h1", {"op": "subscribe", "vnis": [1]})
    s.handle("h2", {"op": "subscribe", "vnis": [2]})
    s.handle("edge", {"op": "subscribe", "vnis": "*"})
    out = s.handle("admin", put(1, "10.0.1.20", HOST_C, ENI_C))
    expected = {"op": "set", "vni": 1, "addr": "10.0.1.20", "host": HOST_C, "eni": ENI_C}
    assert sorted(c for c, _ in out) == ["edge", "h1"]
    assert all(m == expected for _, m in out)
    assert s.table[1]["10.0.1.20"] == (HOST_C, 0xCC)


def test_put_of_a_new_vni_reaches_star_subscribers():
    s = MappingService()
    s.handle("edge", {"op": "subscribe", "vnis": "*"})
    s.handle("h", {"op": "subscribe", "vnis": [1]})
    out = s.handle("admin", put(77, "10.9.0.5", HOST_A, ENI_A))
    assert [c for c, _ in out] == ["edge"]
    assert s.handle("h2", {"op": "subscribe", "vnis": "*"})[0][1]["vni"] == 77


def test_re_put_identical_pushes_nothing_but_a_change_does():
    s = demo_service()
    s.handle("h1", {"op": "subscribe", "vnis": [1]})
    assert s.handle("admin", put(1, "10.0.1.4", HOST_A, ENI_A)) == []
    moved = s.handle("admin", put(1, "10.0.1.4", HOST_B, ENI_A))
    assert moved == [("h1", {"op": "set", "vni": 1, "addr": "10.0.1.4", "host": HOST_B, "eni": ENI_A})]
    assert s.handle("admin", put(1, "10.0.1.4", HOST_B, ENI_A)) == []
    reowned = s.handle("admin", put(1, "10.0.1.4", HOST_B, ENI_B))
    assert reowned[0][1]["eni"] == ENI_B


def test_put_normalizes_addresses():
    s = MappingService()
    s.handle("h", {"op": "subscribe", "vnis": [1]})
    out = s.handle("admin", put(1, "FD00:0::0A", HOST_A, "eni-aa"))
    assert out == [("h", {"op": "set", "vni": 1, "addr": "fd00::a", "host": HOST_A, "eni": ENI_A})]
    assert s.table[1] == {"fd00::a": (HOST_A, 0xAA)}


def test_delete_pushes_unset():
    s = demo_service()
    s.handle("h1", {"op": "subscribe", "vnis": [1]})
    s.handle("h2", {"op": "subscribe", "vnis": [2]})
    s.handle("edge", {"op": "subscribe", "vnis": "*"})
    out = s.handle("admin", {"op": "delete", "vni": 1, "addr": "10.0.1.4"})
    assert sorted(c for c, _ in out) == ["edge", "h1"]
    assert all(m == {"op": "unset", "vni": 1, "addr": "10.0.1.4"} for _, m in out)
    assert "10.0.1.4" not in s.table[1] and "10.0.1.4" in s.table[2]
    assert s.handle("admin", {"op": "delete", "vni": 1, "addr": "10.0.1.4"}) == []
    assert s.handle("admin", {"op": "delete", "vni": 9, "addr": "10.0.1.4"}) == []


def test_query_answers_the_asker_only():
    s = demo_service()
    s.handle("h1", {"op": "subscribe", "vnis": [1]})
    assert s.handle("h2", {"op": "query", "vni": 1, "addr": "10.0.1.10"}) == [
        ("h2", {"op": "set", "vni": 1, "addr": "10.0.1.10", "host": HOST_B, "eni": ENI_B})]
    assert s.handle("h2", {"op": "query", "vni": 1, "addr": "10.0.1.99"}) == [
        ("h2", {"op": "unset", "vni": 1, "addr": "10.0.1.99"})]
    assert s.handle("h2", {"op": "query", "vni": 5, "addr": "10.0.1.10"}) == [
        ("h2", {"op": "unset", "vni": 5, "addr": "10.0.1.10"})]
    assert s.handle("h2", {"op": "query", "vni": 2, "addr": "10.0.1.4"})[0][1]["host"] == HOST_C


def test_ping_and_disconnect():
    s = demo_service()
    assert s.handle("h", {"op": "ping"}) == [("h", {"op": "pong"})]
    s.handle("h", {"op": "subscribe", "vnis": "*"})
    s.disconnect("h")
    s.disconnect("never-connected")
    assert s.subscribers == {}
    assert s.put(1, "10.0.1.30", HOST_A, 1) == []


def test_export_lists_every_entry():
    s = demo_service()
    assert s.export() == [[1, "10.0.1.4", HOST_A, 0xAA], [1, "10.0.1.10", HOST_B, 0xBB],
                          [2, "10.0.1.4", HOST_C, 0xCC]]
    assert MappingService(s.export()).export() == s.export()


BAD_VNIS = [None, "1", True, -1, 1 << 24, 1.0, [1]]
BAD_ADDRS = [None, "", "10.0.1", "10.0.1.256", "host.example", ["10.0.0.1"], {"a": 1}, "10.0.0.1/32"]
BAD_ENIS = [None, "", "eni-", "eni-xyz", "ENI-00000000000000aa", "eni-" + "1" * 17, "00000000000000aa", 170,
            ["eni-1"]]


@pytest.mark.parametrize("vni", BAD_VNIS)
@pytest.mark.parametrize("op", ["query", "put", "delete"])
def test_bad_vni(op, vni):
    message = {**put(1, "10.0.1.5", HOST_A, ENI_A), "op": op, "vni": vni}
    if vni is None:
        del message["vni"]
    with pytest.raises(ProtocolError, match="'vni' must be an integer 0..16777215"):
        demo_service().handle("c", message)


@pytest.mark.parametrize("addr", BAD_ADDRS)
@pytest.mark.parametrize("op", ["query", "put", "delete"])
def test_bad_addr(op, addr):
    s = demo_service()
    with pytest.raises(ProtocolError, match="'addr' must be an IP address"):
        s.handle("c", {**put(1, "x", HOST_A, ENI_A), "op": op, "addr": addr})
    assert s.export() == demo_service().export()


@pytest.mark.parametrize("host", BAD_ADDRS)
def test_bad_host(host):
    with pytest.raises(ProtocolError, match="'host' must be an IP address"):
        demo_service().handle("c", put(1, "10.0.1.5", host, ENI_A))


@pytest.mark.parametrize("eni", BAD_ENIS)
def test_bad_eni(eni):
    s = demo_service()
    with pytest.raises(ProtocolError, match="'eni' must be an ENI id like eni-0123456789abcdef"):
        s.handle("c", put(1, "10.0.1.5", HOST_A, eni))
    assert "10.0.1.5" not in s.table[1]


@pytest.mark.parametrize("eni", ["eni--1", "eni-+1", "eni-0x1", "eni- 1", "eni-1_0"])
def test_non_hex_eni_ids_are_rejected(eni):
    with pytest.raises(ProtocolError, match="'eni'"):
        MappingService().handle("c", put(1, "10.0.1.5", HOST_A, eni))


def test_missing_eni_is_bad():
    message = put(1, "10.0.1.5", HOST_A, ENI_A)
    del message["eni"]
    with pytest.raises(ProtocolError, match="'eni'"):
        demo_service().handle("c", message)


@pytest.mark.parametrize("vnis", ["all", 1, None, {"1": 1}, [1, "2"], [True], [-1]])
def test_bad_subscribe(vnis):
    s = demo_service()
    with pytest.raises(ProtocolError):
        s.handle("c", {"op": "subscribe", "vnis": vnis})


@pytest.mark.parametrize("op", ["get", "snapshot", "set", "PING", ""])
def test_unknown_op(op):
    with pytest.raises(ProtocolError, match=f"unknown op {op!r}"):
        demo_service().handle("c", {"op": op})


def test_protocol_errors_through_decode():
    s = demo_service()
    for line in (b"not json\n", b"[1, 2]\n", b'{"op": "put", "vni": "one"}\n'):
        with pytest.raises(ProtocolError):
            s.handle("c", decode(line))


# --- MappingCache -----------------------------------------------------------------------------------

def snapshot(vni, *entries):
    return {"op": "snapshot", "vni": vni, "entries": [list(e) for e in entries]}


def test_table_is_stable():
    c = MappingCache()
    t = c.table(1)
    assert t == {} and c.table(1) is t and c.tables == {1: t}
    assert c.lookup(2, addresses.key("10.0.0.1")) is None
    assert 2 not in c.tables  # a lookup does not create a table


def test_subscribe_message():
    c = MappingCache()
    assert c.subscribe_message([3, 1, 3]) == {"op": "subscribe", "vnis": [1, 3]}
    assert set(c.tables) == {1, 3} and not c.all_vnis
    e = MappingCache()
    assert e.subscribe_message(None) == {"op": "subscribe", "vnis": "*"}
    assert e.all_vnis and e.tables == {}


def test_snapshot_replaces_in_place():
    c = MappingCache(port=7000)
    t = c.table(1)
    t[addresses.key("10.0.1.99")] = Mapping.of(HOST_C, 1)
    c.apply(snapshot(1, ("10.0.1.4", HOST_A, ENI_A), ("fd00::4", HOST_B, ENI_B)))
    assert c.table(1) is t
    assert t == {addresses.key("10.0.1.4"): Mapping(HOST_A, 0xAA, (HOST_A, 7000)),
                 addresses.key("fd00::4"): Mapping(HOST_B, 0xBB, (HOST_B, 7000))}
    c.apply(snapshot(1))
    assert c.table(1) is t and t == {}
    assert c.updates == 2


@pytest.mark.parametrize("entries", [
    "nope", None, [["10.0.1.4", HOST_A]], [("10.0.1.4", HOST_A, ENI_A, 1)], [["bad", HOST_A, ENI_A]],
    [["10.0.1.4", "bad", ENI_A]], [["10.0.1.4", HOST_A, "eni-zz"]], ["10.0.1.4"],
])
def test_bad_snapshot_leaves_the_table_alone(entries):
    c = MappingCache()
    c.apply(snapshot(1, ("10.0.1.4", HOST_A, ENI_A)))
    before = dict(c.table(1))
    with pytest.raises(ProtocolError):
        c.apply({"op": "snapshot", "vni": 1, "entries": entries})
    assert c.table(1) == before


def test_set_and_unset():
    c = MappingCache()
    c.subscribe_message([1])
    k = addresses.key("10.0.1.7")
    c.apply({"op": "set", "vni": 1, "addr": "10.0.1.7", "host": HOST_A, "eni": ENI_A})
    assert c.lookup(1, k) == Mapping.of(HOST_A, 0xAA)
    c.apply({"op": "set", "vni": 1, "addr": "10.0.1.7", "host": HOST_B, "eni": ENI_B})
    assert c.lookup(1, k) == Mapping.of(HOST_B, 0xBB)
    c.apply({"op": "unset", "vni": 1, "addr": "10.0.1.7"})
    assert c.lookup(1, k) is None
    c.apply({"op": "unset", "vni": 1, "addr": "10.0.1.7"})  # again: nothing to do
    c.apply({"op": "unset", "vni": 9, "addr": "10.0.1.7"})
    assert c.updates == 3 and c.size() == 0


def test_set_for_a_vpc_not_held_is_ignored_but_kept_by_the_edge():
    host = MappingCache()
    host.subscribe_message([1])
    host.apply({"op": "set", "vni": 2, "addr": "10.0.1.7", "host": HOST_A, "eni": ENI_A})
    assert 2 not in host.tables and host.updates == 0
    edge = MappingCache()
    edge.subscribe_message(None)
    edge.apply({"op": "set", "vni": 2, "addr": "10.0.1.7", "host": HOST_A, "eni": ENI_A})
    assert edge.lookup(2, addresses.key("10.0.1.7")) == Mapping.of(HOST_A, 0xAA)


@pytest.mark.parametrize("message", [
    {"op": "set", "vni": 1, "addr": "10.0.1.7", "host": HOST_A},
    {"op": "set", "vni": 1, "addr": "10.0.1.7", "host": "nowhere", "eni": ENI_A},
    {"op": "set", "vni": -1, "addr": "10.0.1.7", "host": HOST_A, "eni": ENI_A},
    {"op": "unset", "vni": 1, "addr": "10.0.1"},
    {"op": "snapshot", "vni": "1", "entries": []},
    {"op": "subscribe", "vnis": "*"},
    {"op": "bogus"},
])
def test_cache_rejects_bad_messages(message):
    c = MappingCache()
    c.subscribe_message([1])
    with pytest.raises(ProtocolError):
        c.apply(message)
    assert c.size() == 0


def test_cache_ignores_pong_and_error():
    c = MappingCache()
    for op in ("pong", "ok", "error"):
        c.apply({"op": op, "message": "whatever"})
    assert c.size() == 0 and c.updates == 0


def test_note_miss_queues_one_query_per_retry_interval():
    c = MappingCache()
    k = addresses.key("10.0.1.9")
    c.note_miss(1, k, 100.0)
    c.note_miss(1, k, 100.5)
    c.note_miss(1, k, 100.0 + c.QUERY_RETRY - 1e-6)
    assert c.queries == [{"op": "query", "vni": 1, "addr": "10.0.1.9"}]
    assert c.misses == 3
    c.note_miss(1, k, 100.0 + c.QUERY_RETRY)
    assert len(c.queries) == 2
    c.note_miss(2, k, 101.0)  # another VPC, same address: its own query
    c.note_miss(1, addresses.key("fd00::9"), 101.0)
    assert c.take_queries() == [{"op": "query", "vni": 1, "addr": "10.0.1.9"}] * 2 + [
        {"op": "query", "vni": 2, "addr": "10.0.1.9"}, {"op": "query", "vni": 1, "addr": "fd00::9"}]
    assert c.queries == [] and c.take_queries() == []
    c.note_miss(1, k, 101.5)  # asked at 101.0: still within the interval
    assert c.queries == []
    assert c.misses == 7


def test_answered_query_is_counted_and_kept():
    c = MappingCache()
    c.subscribe_message([1])
    k = addresses.key("10.0.1.9")
    c.note_miss(3, k, 0.0)  # a VPC the cache does not hold: the answer still fills the miss
    c.apply({"op": "set", "vni": 3, "addr": "10.0.1.9", "host": HOST_A, "eni": ENI_A})
    assert c.hits_by_query == 1
    assert c.lookup(3, k) == Mapping.of(HOST_A, 0xAA)
    assert c.pending == {}
    c.apply({"op": "set", "vni": 3, "addr": "10.0.1.9", "host": HOST_B, "eni": ENI_B})  # a push, not an answer
    assert c.hits_by_query == 1
    c.note_miss(1, k, 0.0)
    c.apply({"op": "unset", "vni": 1, "addr": "10.0.1.9"})  # a failed query: not a hit, not pending
    assert c.hits_by_query == 1 and c.pending == {}
    c.note_miss(1, k, 0.1)  # after an answer the next miss asks again at once
    assert len(c.take_queries()) == 3


def test_lookup_hit_is_the_same_mapping():
    c = MappingCache()
    c.apply(snapshot(1, ("10.0.1.4", HOST_A, ENI_A)))
    k = addresses.key("10.0.1.4")
    m = c.table(1)[k]
    assert c.lookup(1, k) is m and c.lookup(1, k) is c.lookup(1, k)
    assert c.lookup(1, k).underlay is m.underlay
    assert c.lookup(1, addresses.key("10.0.1.5")) is None


def test_v4_and_v6_keys_do_not_collide():
    c = MappingCache()
    c.apply(snapshot(1, ("10.0.0.1", HOST_A, ENI_A), ("::a00:1", HOST_B, ENI_B), ("::ffff:10.0.0.1", HOST_C, ENI_C)))
    keys = {addresses.key("10.0.0.1"), addresses.key("::a00:1"), addresses.key("::ffff:10.0.0.1")}
    assert len(keys) == 3 and c.size() == 3
    assert c.lookup(1, addresses.key("10.0.0.1")).host == HOST_A
    assert c.lookup(1, addresses.key("::a00:1")).host == HOST_B
    assert c.lookup(1, addresses.key("::ffff:10.0.0.1")).host == HOST_C
    assert addresses.key("10.0.0.1") == 0x0A000001  # the hot path compares against raw header ints


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_address_keys_round_trip(ip):
    k = addresses.key(ip)
    assert addresses.key(str(ip)) == k
    assert addresses.text(k) == str(ip)
    assert (k >= addresses.V6_TAG) == (ip.version == 6)
    assert (k & ~addresses.V6_TAG) == int(ip)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_eni_ids_round_trip(n):
    assert addresses.eni_number(addresses.eni_id(n)) == n
    assert addresses.eni_id(n) == f"eni-{n:016x}"


# --- service <-> cache, in memory -------------------------------------------------------------------

class Wire:
    """One daemon and any number of caches; every message goes through encode/decode as on TCP."""

    def __init__(self, service):
        self.service = service
        self.caches = {}

    def deliver(self, outgoing):
        for conn, message in outgoing:
            self.caches[conn].apply(decode(encode(message)))

    def send(self, conn, message):
        self.deliver(self.service.handle(conn, decode(encode(message))))

    def attach(self, name, cache, vnis):
        self.caches[name] = cache
        self.send(name, cache.subscribe_message(vnis))

    def flush(self, name):
        for q in self.caches[name].take_queries():
            self.send(name, q)


def test_end_to_end_preload_push_and_miss():
    w = Wire(demo_service())
    host, edge = MappingCache(), MappingCache()
    w.attach("host", host, [1])
    w.attach("edge", edge, None)
    t1 = host.table(1)
    # Preload: the snapshot is in the cache when subscribe returns.
    assert host.lookup(1, addresses.key("10.0.1.10")) == Mapping.of(HOST_B, 0xBB)
    assert host.size() == 2 and edge.size() == 3
    assert host.lookup(2, addresses.key("10.0.1.4")) is None
    # Push within the same call.
    w.deliver(w.service.handle("admin", decode(encode(put(1, "10.0.1.20", HOST_C, ENI_C)))))
    assert host.lookup(1, addresses.key("10.0.1.20")) == Mapping.of(HOST_C, 0xCC)
    assert edge.lookup(1, addresses.key("10.0.1.20")) == Mapping.of(HOST_C, 0xCC)
    assert host.table(1) is t1
    w.deliver(w.service.handle("admin", {"op": "delete", "vni": 1, "addr": "10.0.1.20"}))
    assert host.lookup(1, addresses.key("10.0.1.20")) is None
    assert edge.lookup(1, addresses.key("10.0.1.20")) is None
    # Miss -> query -> answer, for a VPC the host does not subscribe to.
    k = addresses.key("10.0.1.4")
    host.note_miss(2, k, 5.0)
    w.flush("host")
    assert host.lookup(2, k) == Mapping.of(HOST_C, 0xCC)
    assert host.hits_by_query == 1 and host.pending == {}
    # A miss nobody can answer: unset, not a hit, the next miss asks again.
    k9 = addresses.key("10.0.1.99")
    host.note_miss(1, k9, 6.0)
    w.flush("host")
    assert host.lookup(1, k9) is None and host.hits_by_query == 1 and host.pending == {}
    host.note_miss(1, k9, 6.1)
    assert host.queries == [{"op": "query", "vni": 1, "addr": "10.0.1.99"}]
    # Resubscribing (a reconnect) replaces the table in place with the daemon's current state.
    t1[addresses.key("10.0.1.200")] = Mapping.of(HOST_A, 1)
    w.attach("host", host, [1])
    assert host.table(1) is t1 and addresses.key("10.0.1.200") not in t1 and len(t1) == 2


ops = st.lists(st.tuples(
    st.sampled_from(["put", "delete"]), st.sampled_from([1, 2]),
    st.sampled_from(["10.0.1.1", "10.0.1.2", "fd00::1", "::a00:101"]),
    st.sampled_from([HOST_A, HOST_B]), st.sampled_from([ENI_A, ENI_B])), max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops, ops)
def test_caches_follow_the_service(before, after):
    w = Wire(MappingService())

    def run(steps):
        for op, vni, addr, host, eni in steps:
            msg = put(vni, addr, host, eni) if op == "put" else {"op": "delete", "vni": vni, "addr": addr}
            w.deliver(w.service.handle("admin", msg))

    run(before)
    caches = {"h1": MappingCache(), "edge": MappingCache()}
    w.attach("h1", caches["h1"], [1])
    w.attach("edge", caches["edge"], None)
    run(after)
    for name, vnis in (("h1", [1]), ("edge", [1, 2])):
        for vni in vnis:
            want = {addresses.key(a): Mapping.of(h, e) for a, (h, e) in w.service.table.get(vni, {}).items()}
            assert caches[name].tables.get(vni, {}) == want
    assert 2 not in caches["h1"].tables
