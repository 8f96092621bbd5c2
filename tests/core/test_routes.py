"""vswitch.routes: longest prefix match per family, blackholes, refusals, then the compiled table against a
plain reference (a loop over the routes, ``ipaddress`` for CIDRs) on random tables and addresses."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from vswitch.addresses import V6_TAG, key as K
from vswitch.routes import Route, RouteTable

IGW, NAT, ENI, EIGW = "igw-0123456789abcdef0", "nat-0123456789abcdef0", "eni-0123456789abcdef", "eigw-0123456789abcdef0"


def route(destination, target_type="local", target_id=None, state="active"):
    return {"destination": destination, "target_type": target_type, "target_id": target_id, "state": state}


def table(*routes):
    return RouteTable.compile(list(routes))


def dest(t, address):
    found = t.lookup(K(address))
    return None if found is None else found.destination


def test_the_longest_prefix_wins_in_any_order():
    routes = [route("0.0.0.0/0", "igw", IGW), route("10.0.0.0/16"), route("10.0.1.0/24", "eni", ENI),
              route("10.0.1.7/32", "nat", NAT), route("192.168.0.0/16", "nat", NAT)]
    for order in (routes, routes[::-1], routes[2:] + routes[:2]):
        t = table(*order)
        assert dest(t, "10.0.1.7") == "10.0.1.7/32"
        assert dest(t, "10.0.1.8") == "10.0.1.0/24"
        assert dest(t, "10.0.2.1") == "10.0.0.0/16"
        assert dest(t, "10.1.0.1") == "0.0.0.0/0"
        assert dest(t, "192.168.3.4") == "192.168.0.0/16"
        assert dest(t, "0.0.0.0") == dest(t, "255.255.255.255") == "0.0.0.0/0"
    assert table(*routes).lookup(K("10.0.2.1")) == Route("10.0.0.0/16", "local", None, "active")


def test_ipv4_and_ipv6_are_independent():
    t = table(route("0.0.0.0/0", "igw", IGW), route("10.0.0.0/16"))
    assert t.lookup(K("2001:db8::1")) is None  # 0.0.0.0/0 does not cover ::/0
    assert t.lookup(K("::10.0.0.1")) is None and t.lookup(K("::ffff:10.0.0.1")) is None
    t = table(route("::/0", "eigw", EIGW), route("2001:db8::/56"))
    assert t.lookup(K("10.0.0.1")) is None and t.lookup(K("0.0.0.0")) is None
    assert dest(t, "2001:db8:0:ff::1") == "2001:db8::/56"
    assert dest(t, "2001:db8:0:100::1") == "::/0"
    assert dest(t, "::") == "::/0" and dest(t, "::a00:1") == "::/0"
    both = table(route("0.0.0.0/0", "igw", IGW), route("::/0", "igw", IGW), route("10.0.0.0/16"),
                 route("2001:db8::/56"))
    assert dest(both, "10.0.0.1") == "10.0.0.0/16" and dest(both, "2001:db8::1") == "2001:db8::/56"
    assert dest(both, "8.8.8.8") == "0.0.0.0/0" and dest(both, "2606:4700::1") == "::/0"


def test_no_route_is_none_and_an_empty_table_routes_nothing():
    assert table().lookup(K("10.0.0.1")) is None and table().lookup(K("::1")) is None
    assert len(table()) == 0
    assert table(route("10.0.0.0/16")).lookup(K("10.1.0.1")) is None


def test_a_blackhole_matches_and_does_not_fall_through():
    t = table(route("0.0.0.0/0", "igw", IGW), route("10.0.0.0/16"),
              route("192.168.0.0/16", "nat", NAT, "blackhole"))
    r = t.lookup(K("192.168.1.1"))
    assert r.destination == "192.168.0.0/16" and r.state == "blackhole" and not r.active
    assert str(r) == f"192.168.0.0/16 {NAT} (blackhole)"
    assert t.lookup(K("10.0.0.1")).active and str(t.lookup(K("10.0.0.1"))) == "10.0.0.0/16 local"
    assert str(t.lookup(K("1.1.1.1"))) == f"0.0.0.0/0 {IGW}"


def test_routes_are_normalised_and_kept_in_order():
    t = RouteTable.compile([{"destination": "2001:DB8::/32", "target_type": "igw", "target_id": IGW},
                            route("10.0.0.0/16")])
    assert [r.destination for r in t.routes] == ["2001:db8::/32", "10.0.0.0/16"]
    assert t.routes[0].state == "active"  # the default
    assert len(t) == 2 and "2001:db8::/32" in repr(t)


@pytest.mark.parametrize("routes, says", [
    ([route("10.0.0.0/16"), route("10.0.0.0/16", "igw", IGW)], "two routes for 10.0.0.0/16"),
    ([route("::/0", "igw", IGW), route("0::/0", "eigw", EIGW)], "two routes for ::/0"),
    ([route("10.0.0.1/16")], "host bits"),
    ([route("banana")], "banana"),
    ([route("0.0.0.0/0", "vgw", "vgw-1")], "target_type"),
    ([route("0.0.0.0/0", "igw", IGW, "gone")], "state"),
    ([route("0.0.0.0/0", "igw", None)], "target_id"),
    ([route("10.0.0.0/16", "local", IGW)], "target_id"),
])
def test_bad_tables_are_refused(routes, says):
    with pytest.raises(ValueError, match=says):
        RouteTable.compile(routes)


def test_ipv4_and_ipv6_of_one_prefix_are_distinct_routes():
    t = table(route("0.0.0.0/0", "igw", IGW), route("::/0", "eigw", EIGW))
    assert t.lookup(K("1.2.3.4")).target_type == "igw" and t.lookup(K("::1")).target_type == "eigw"
    assert t.lookup(V6_TAG).target_type == "eigw" and t.lookup(0).target_type == "igw"


# --- against a reference -----------------------------------------------------------------------------------
def reference(routes: list[dict], address: str) -> str | None:
    """The destination of the longest route holding ``address``: a loop over the routes."""
    ip = ipaddress.ip_address(address)
    best = None
    for r in routes:
        net = ipaddress.ip_network(r["destination"])
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best.prefixlen):
            best = net
    return None if best is None else str(best)


def networks(version: int):
    bits = 32 if version == 4 else 128
    return st.tuples(st.integers(0, 2 ** bits - 1), st.integers(0, bits)).map(
        lambda t: (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)(
            ((t[0] >> (bits - t[1])) << (bits - t[1]) if t[1] else 0, t[1])))


TARGETS = st.sampled_from([("local", None), ("igw", IGW), ("nat", NAT), ("eni", ENI), ("eigw", EIGW)])


@st.composite
def tables_and_addresses(draw):
    # Few prefix lengths and nested networks are where mistakes hide: derive many routes from a few.
    nets = draw(st.lists(st.one_of(networks(4), networks(6)), max_size=12))
    more = []
    for net in nets:
        for extra in draw(st.lists(st.integers(0, 8), max_size=3)):
            if net.prefixlen + extra <= net.max_prefixlen:
                subs = list(net.subnets(prefixlen_diff=extra)) if extra <= 3 else [
                    next(net.subnets(prefixlen_diff=extra))]
                more.append(draw(st.sampled_from(subs)))
        if net.prefixlen > 0 and draw(st.booleans()):
            more.append(net.supernet(prefixlen_diff=draw(st.integers(1, net.prefixlen))))
    unique = list(dict.fromkeys(map(str, nets + more)))
    routes = []
    for d in unique:
        target_type, target_id = draw(TARGETS)
        routes.append(route(d, target_type, target_id, draw(st.sampled_from(["active", "blackhole"]))))
    # Addresses inside the routes (their edges too), and anywhere in either family.
    inside = []
    for d in unique:
        net = ipaddress.ip_network(d)
        inside += [net.network_address, net.broadcast_address,
                   net.network_address + draw(st.integers(0, net.num_addresses - 1))]
    anywhere = draw(st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), max_size=10))
    return routes, [str(a) for a in inside + anywhere]


@settings(max_examples=400, deadline=None)
@given(tables_and_addresses())
def test_lookup_agrees_with_the_reference(case):
    routes, addresses = case
    t = RouteTable.compile(routes)
    by_destination = {r["destination"]: r for r in routes}
    for address in addresses:
        found = t.lookup(K(address))
        expected = reference(routes, address)
        assert (found and found.destination) == expected, (address, routes)
        if found is not None:
            r = by_destination[found.destination]
            assert (found.target_type, found.target_id, found.state) == (r["target_type"], r["target_id"],
                                                                         r["state"])
