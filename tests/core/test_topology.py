import copy
import hashlib
import ipaddress
import pathlib
import re

import pytest
from hypothesis import given, settings, strategies as st

from vswitch.topology import (
    Host, Subnet, Topology, TopologyError, load_topology, parse_topology, reserved_addresses,
)

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
IP = ipaddress.IPv4Address


def demo() -> dict:
    """configs/demo.yaml as loaded: each error case below changes one thing in a fresh copy."""
    return {
        "hosts": [{"name": "host-a"}, {"name": "host-b"}],
        "vpcs": [{
            "name": "demo",
            "cidr": "10.0.0.0/16",
            "subnets": [{"name": "app", "cidr": "10.0.1.0/24"}],
            "instances": [
                {"name": "web", "subnet": "app", "host": "host-b", "ip": "10.0.1.10"},
                {"name": "client", "subnet": "app", "host": "host-a"},
            ],
        }],
    }


def expected_eni(vpc: str, instance: str) -> str:
    return "eni-" + hashlib.sha256(f"{vpc}/{instance}".encode()).hexdigest()[:16]


def test_demo_file():
    t = load_topology(CONFIGS / "demo.yaml")
    assert t == parse_topology(demo())
    assert t.hosts == (Host("host-a"), Host("host-b"))
    assert t.underlay_mtu == 65535
    (vpc,) = t.vpcs
    assert (vpc.name, vpc.cidr, vpc.vni) == ("demo", ipaddress.IPv4Network("10.0.0.0/16"), 1)
    assert vpc.subnet("app") == Subnet("app", ipaddress.IPv4Network("10.0.1.0/24"))
    web, client = t.instances()
    assert (web.name, web.vpc, web.subnet, web.host, web.ip) == ("web", "demo", "app", "host-b", IP("10.0.1.10"))
    assert (client.name, client.host, client.ip) == ("client", "host-a", IP("10.0.1.4"))
    assert web.source_dest_check and client.source_dest_check
    for inst in (web, client):
        assert re.fullmatch(r"eni-[0-9a-f]{16}", inst.eni_id)
        assert inst.eni_id == expected_eni("demo", inst.name)
    assert web.eni_id != client.eni_id
    assert t.instance("client") is client
    assert t.host("host-b") == Host("host-b", offload=True)


def test_lookups_of_absent_names_raise_key_error():
    t = parse_topology(demo())
    with pytest.raises(KeyError):
        t.instance("nope")
    with pytest.raises(KeyError):
        t.host("nope")
    with pytest.raises(KeyError):
        t.vpcs[0].subnet("nope")


def test_two_vpcs_file_shares_addresses_across_vpcs():
    t = load_topology(CONFIGS / "two-vpcs.yaml")
    blue, red = t.vpcs
    assert (blue.name, blue.vni, red.name, red.vni) == ("blue", 1, "red", 2)
    assert blue.cidr == red.cidr
    ips = {i.name: (i.vpc, i.host, i.ip) for i in t.instances()}
    assert ips == {
        "blue-a": ("blue", "host-a", IP("10.0.1.4")),
        "blue-b": ("blue", "host-b", IP("10.0.1.5")),
        "red-a": ("red", "host-a", IP("10.0.1.4")),
        "red-b": ("red", "host-b", IP("10.0.1.5")),
    }
    assert len({i.eni_id for i in t.instances()}) == 4


def test_optional_fields():
    data = demo()
    data["underlay_mtu"] = 9000
    data["hosts"][1]["offload"] = False
    data["vpcs"][0]["vni"] = 4242
    data["vpcs"][0]["instances"][0]["source_dest_check"] = False
    t = parse_topology(data)
    assert t.underlay_mtu == 9000
    assert t.host("host-b") == Host("host-b", offload=False)
    assert t.vpcs[0].vni == 4242
    assert not t.instance("web").source_dest_check
    assert t.instance("client").source_dest_check


def test_automatic_addresses_skip_explicit_ones_and_go_in_file_order():
    data = demo()
    data["vpcs"][0]["subnets"].append({"name": "db", "cidr": "10.0.2.0/28"})
    data["vpcs"][0]["instances"] = [
        {"name": "a", "subnet": "app", "host": "host-a"},
        {"name": "b", "subnet": "app", "host": "host-a", "ip": "10.0.1.5"},
        {"name": "c", "subnet": "app", "host": "host-a"},
        {"name": "d", "subnet": "db", "host": "host-b"},
        {"name": "e", "subnet": "app", "host": "host-a", "ip": "10.0.1.4"},
        {"name": "f", "subnet": "app", "host": "host-a"},
    ]
    t = parse_topology(data)
    assert [(i.name, str(i.ip)) for i in t.instances()] == [
        ("a", "10.0.1.6"), ("b", "10.0.1.5"), ("c", "10.0.1.7"),
        ("d", "10.0.2.4"), ("e", "10.0.1.4"), ("f", "10.0.1.8"),
    ]


def test_a_subnet_can_be_filled_to_the_last_usable_address():
    data = demo()
    data["vpcs"][0]["subnets"] = [{"name": "app", "cidr": "10.0.1.0/28"}]
    data["vpcs"][0]["instances"] = [{"name": f"i{n}", "subnet": "app", "host": "host-a"} for n in range(11)]
    assert [str(i.ip) for i in parse_topology(data).instances()] == [f"10.0.1.{n}" for n in range(4, 15)]


def test_full_subnet_at_the_top_of_the_address_space():
    data = demo()
    data["vpcs"][0].update(cidr="255.255.0.0/16", subnets=[{"name": "app", "cidr": "255.255.255.240/28"}])
    data["vpcs"][0]["instances"] = [{"name": f"i{n}", "subnet": "app", "host": "host-a"} for n in range(11)]
    assert str(parse_topology(data).instance("i10").ip) == "255.255.255.254"
    data["vpcs"][0]["instances"].append({"name": "late", "subnet": "app", "host": "host-a"})
    with pytest.raises(TopologyError, match=r"^vpcs\[0\]\.instances\[11\]: no free address left for 'late'"):
        parse_topology(data)


def test_vnis_fill_the_gaps_left_by_explicit_ones():
    data = demo()
    base = data["vpcs"][0]
    data["vpcs"] = [dict(base, name=n, instances=[]) for n in ("a", "b", "c", "d")]
    data["vpcs"][1]["vni"] = 1
    data["vpcs"][3]["vni"] = 3
    assert [v.vni for v in parse_topology(data).vpcs] == [2, 1, 4, 3]


def test_subnets_and_instances_may_be_left_out():
    t = parse_topology({"hosts": [{"name": "h"}], "vpcs": [{"name": "empty", "cidr": "10.0.0.0/16"}]})
    assert t.vpcs[0].subnets == () and t.instances() == []


def test_reserved_addresses():
    assert reserved_addresses(ipaddress.IPv4Network("10.0.1.0/24")) == {
        IP("10.0.1.0"), IP("10.0.1.1"), IP("10.0.1.2"), IP("10.0.1.3"), IP("10.0.1.255")}


def _set(path: str, value):
    """A change to demo(): set the value at a dotted path such as ``vpcs.0.subnets.0.cidr``."""
    def change(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            data = data[p]
        data[last] = value
    return change


def _delete(path: str):
    def change(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            data = data[p]
        del data[last]
    return change


def _add_subnet(name, cidr):
    return lambda data: data["vpcs"][0]["subnets"].append({"name": name, "cidr": cidr})


def _add_instance(**inst):
    return lambda data: data["vpcs"][0]["instances"].append({"subnet": "app", "host": "host-a", **inst})


def _add_vpc(**vpc):
    return lambda data: data["vpcs"].append({"cidr": "10.0.0.0/16", **vpc})


def _fill_subnet(data):
    data["vpcs"][0]["subnets"] = [{"name": "app", "cidr": "10.0.1.0/28"}]
    data["vpcs"][0]["instances"] = [{"name": f"i{n}", "subnet": "app", "host": "host-a"} for n in range(12)]


# (change to demo(), substrings the message must contain: the field path, then the offending value)
ERRORS = {
    "unknown top-level key": (_set("hostz", []), ["top level: unknown key 'hostz'"]),
    "unknown host key": (_set("hosts.1.zone", "x"), ["hosts[1]: unknown key 'zone'", "offload"]),
    "unknown vpc key": (_set("vpcs.0.region", "x"), ["vpcs[0]: unknown key 'region'"]),
    "unknown subnet key": (_set("vpcs.0.subnets.0.az", "x"), ["vpcs[0].subnets[0]: unknown key 'az'"]),
    "unknown instance key": (_set("vpcs.0.instances.1.mac", "x"), ["vpcs[0].instances[1]: unknown key 'mac'"]),
    "non-string key": (_set("vpcs.0.subnets.0.7", "x"), ["vpcs[0].subnets[0]: key 7 is not a string"]),
    "hosts missing": (_delete("hosts"), ["hosts: required"]),
    "hosts empty": (_set("hosts", []), ["hosts: ", "at least 1"]),
    "vpcs missing": (_delete("vpcs"), ["vpcs: required"]),
    "vpcs not a list": (_set("vpcs", {"name": "demo"}), ["vpcs: ", "valid list"]),
    "host name missing": (_delete("hosts.0.name"), ["hosts[0].name: required"]),
    "host name uppercase": (_set("hosts.0.name", "Host-a"), ["hosts[0].name: 'Host-a'"]),
    "host name starts with digit": (_set("hosts.0.name", "1host"), ["hosts[0].name: '1host'"]),
    "host name too long": (_set("hosts.0.name", "h" * 21), ["hosts[0].name: '" + "h" * 21]),
    "host name empty": (_set("hosts.0.name", ""), ["hosts[0].name: ''"]),
    "host name not a string": (_set("hosts.0.name", 5), ["hosts[0].name: ", "got 5"]),
    "offload not a bool": (_set("hosts.0.offload", "yes"), ["hosts[0].offload: ", "'yes'"]),
    "vpc name underscore": (_set("vpcs.0.name", "my_vpc"), ["vpcs[0].name: 'my_vpc'"]),
    "instance name bad": (_set("vpcs.0.instances.0.name", "Web"), ["vpcs[0].instances[0].name: 'Web'"]),
    "subnet name bad": (_set("vpcs.0.subnets.0.name", "App"), ["vpcs[0].subnets[0].name: 'App'"]),
    "vpc cidr not a cidr": (_set("vpcs.0.cidr", "ten/16"), ["vpcs[0].cidr: 'ten/16'"]),
    "vpc cidr not a string": (_set("vpcs.0.cidr", 10), ["vpcs[0].cidr: ", "got 10"]),
    "vpc cidr ipv6": (_set("vpcs.0.cidr", "fd00::/48"), ["vpcs[0].cidr: 'fd00::/48'"]),
    "vpc cidr prefix too short": (_set("vpcs.0.cidr", "10.0.0.0/8"), ["vpcs[0].cidr: 10.0.0.0/8", "/16", "/8"]),
    "vpc cidr prefix too long": (_set("vpcs.0.cidr", "10.0.0.0/29"), ["vpcs[0].cidr: 10.0.0.0/29", "/28", "/29"]),
    "vpc cidr bare address": (_set("vpcs.0.cidr", "10.0.0.0"), ["vpcs[0].cidr: 10.0.0.0", "/32"]),
    "vpc cidr host bits": (_set("vpcs.0.cidr", "10.0.0.1/16"),
                           ["vpcs[0].cidr: 10.0.0.1/16", "host bits", "10.0.0.0/16"]),
    "subnet cidr prefix too long": (_set("vpcs.0.subnets.0.cidr", "10.0.1.0/29"),
                                    ["vpcs[0].subnets[0].cidr: 10.0.1.0/29", "/28"]),
    "subnet cidr host bits": (_set("vpcs.0.subnets.0.cidr", "10.0.1.5/24"),
                              ["vpcs[0].subnets[0].cidr: 10.0.1.5/24", "host bits"]),
    "subnet outside vpc": (_add_subnet("db", "10.1.0.0/24"),
                           ["vpcs[0].subnets[1].cidr: 10.1.0.0/24 is outside VPC 'demo' (10.0.0.0/16)"]),
    "subnet larger than vpc": (lambda d: _set("vpcs.0.cidr", "10.0.1.0/24")(d) or _add_subnet("db", "10.0.0.0/16")(d),
                               ["vpcs[0].subnets[1].cidr: 10.0.0.0/16 is outside VPC"]),
    "subnets overlap": (_add_subnet("db", "10.0.1.128/25"),
                        ["vpcs[0].subnets[1].cidr: 10.0.1.128/25 overlaps subnet 'app' (10.0.1.0/24)"]),
    "duplicate host": (lambda d: d["hosts"].append({"name": "host-a"}),
                       ["hosts[2].name: duplicate host name 'host-a'", "hosts[0].name"]),
    "duplicate vpc": (_add_vpc(name="demo"), ["vpcs[1].name: duplicate VPC name 'demo'", "vpcs[0].name"]),
    "duplicate subnet": (_add_subnet("app", "10.0.2.0/24"),
                         ["vpcs[0].subnets[1].name: duplicate subnet name 'app'"]),
    "duplicate instance in vpc": (_add_instance(name="web"),
                                  ["vpcs[0].instances[2].name: duplicate instance name 'web'"]),
    "duplicate instance across vpcs": (
        _add_vpc(name="other", subnets=[{"name": "app", "cidr": "10.0.1.0/24"}],
                 instances=[{"name": "client", "subnet": "app", "host": "host-a"}]),
        ["vpcs[1].instances[0].name: duplicate instance name 'client'", "vpcs[0].instances[1].name"]),
    "duplicate vni": (lambda d: _set("vpcs.0.vni", 7)(d) or _add_vpc(name="other", vni=7)(d),
                      ["vpcs[1].vni: duplicate VNI 7 ", "vpcs[0].vni"]),
    "vni zero": (_set("vpcs.0.vni", 0), ["vpcs[0].vni: ", "got 0"]),
    "vni too large": (_set("vpcs.0.vni", 1 << 24), ["vpcs[0].vni: ", "16777216"]),
    "vni not an int": (_set("vpcs.0.vni", "7"), ["vpcs[0].vni: ", "'7'"]),
    "mtu too small": (_set("underlay_mtu", 1279), ["underlay_mtu: ", "1279"]),
    "mtu too large": (_set("underlay_mtu", 65536), ["underlay_mtu: ", "65536"]),
    "mtu bool": (_set("underlay_mtu", True), ["underlay_mtu: ", "True"]),
    "unknown subnet": (_set("vpcs.0.instances.1.subnet", "db"),
                       ["vpcs[0].instances[1].subnet: unknown subnet 'db' in VPC 'demo'"]),
    "subnet of another vpc": (
        _add_vpc(name="other", subnets=[{"name": "db", "cidr": "10.0.2.0/24"}], instances=[
            {"name": "x", "subnet": "app", "host": "host-a"}]),
        ["vpcs[1].instances[0].subnet: unknown subnet 'app' in VPC 'other'"]),
    "unknown host": (_set("vpcs.0.instances.0.host", "host-z"), ["vpcs[0].instances[0].host: unknown host 'host-z'"]),
    "ip not an address": (_set("vpcs.0.instances.0.ip", "10.0.1.300"), ["vpcs[0].instances[0].ip: '10.0.1.300'"]),
    "ip not a string": (_set("vpcs.0.instances.0.ip", 167772426), ["vpcs[0].instances[0].ip: ", "167772426"]),
    "ip outside subnet": (_set("vpcs.0.instances.0.ip", "10.0.2.10"),
                          ["vpcs[0].instances[0].ip: 10.0.2.10 is outside subnet 'app' (10.0.1.0/24)"]),
    "ip outside vpc": (_set("vpcs.0.instances.0.ip", "192.168.1.10"), ["vpcs[0].instances[0].ip: 192.168.1.10"]),
    **{f"ip reserved .{n}": (_set("vpcs.0.instances.0.ip", f"10.0.1.{n}"),
                             [f"vpcs[0].instances[0].ip: 10.0.1.{n} is one of the 5 reserved"])
       for n in (0, 1, 2, 3, 255)},
    "ip duplicate in vpc": (_add_instance(name="web2", ip="10.0.1.10"),
                            ["vpcs[0].instances[2].ip: duplicate address 10.0.1.10 in this VPC",
                             "vpcs[0].instances[0].ip"]),
    "subnet full": (_fill_subnet, ["vpcs[0].instances[11]: ", "'i11'", "'app' (10.0.1.0/28)"]),
    "source_dest_check not a bool": (_set("vpcs.0.instances.0.source_dest_check", "no"),
                                     ["vpcs[0].instances[0].source_dest_check: ", "'no'"]),
}


@pytest.mark.parametrize("change,expected", ERRORS.values(), ids=ERRORS.keys())
def test_invalid_topology_names_the_field_and_value(change, expected):
    data = copy.deepcopy(demo())
    change(data)
    with pytest.raises(TopologyError) as e:
        parse_topology(data)
    message = str(e.value)
    for part in expected:
        assert part in message
    assert all(re.match(r"(top level|[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*): ", line)
               for line in message.splitlines()), message


@pytest.mark.parametrize("data", [None, [], "hosts", 3])
def test_top_level_must_be_a_mapping(data):
    with pytest.raises(TopologyError, match="^top level: expected a mapping"):
        parse_topology(data)


def test_every_problem_is_reported_one_per_line():
    data = demo()
    data["hosts"].append({"name": "host-a"})
    data["vpcs"][0]["instances"][0]["subnet"] = "db"
    data["vpcs"][0]["instances"][1]["ip"] = "10.0.1.1"
    lines = str(pytest.raises(TopologyError, parse_topology, data).value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "hosts[2].name", "vpcs[0].instances[0].subnet", "vpcs[0].instances[1].ip"]


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(TopologyError, match=f"^{re.escape(str(missing))}: cannot read"):
        load_topology(missing)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("hosts: [{name: host-a}\nvpcs: []\n")
    with pytest.raises(TopologyError, match=f"^{re.escape(str(bad_yaml))}: invalid YAML"):
        load_topology(bad_yaml)
    bad_value = tmp_path / "bad-value.yaml"
    bad_value.write_text("hosts: [{name: host-a}]\nvpcs: []\nunderlay_mtu: 100\n")
    with pytest.raises(TopologyError, match=f"^{re.escape(str(bad_value))}: underlay_mtu: "):
        load_topology(bad_value)
    with pytest.raises(TopologyError, match=f"^{re.escape(str(tmp_path))}: cannot read"):
        load_topology(tmp_path)


def test_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(TopologyError, match="empty.yaml: top level: expected a mapping"):
        load_topology(empty)


def test_result_is_plain_and_frozen():
    t = parse_topology(demo())
    assert type(t) is Topology
    with pytest.raises(AttributeError):
        t.vpcs[0].instances[0].ip = IP("10.0.1.99")


# --- fuzzing: whatever the YAML holds, the only failure is TopologyError --------------------------------

KEYS = ["hosts", "vpcs", "underlay_mtu", "name", "offload", "cidr", "vni", "subnets", "instances",
        "subnet", "host", "ip", "source_dest_check"]
ANY_YAML = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5) | st.integers(), children, max_size=5),
    max_leaves=40,
)

# Well-shaped files from a few plausible values, so most get past the shape checks and exercise the
# cross-checks: duplicates, references, containment, reserved and exhausted addresses, VNI assignment.
NAMES = st.sampled_from(["a", "b", "c"])
CIDRS = st.sampled_from(["10.0.0.0/16", "10.0.1.0/24", "10.0.1.0/28", "10.0.1.16/28", "10.1.0.0/16",
                         "255.255.0.0/16", "255.255.255.240/28", "0.0.0.0/28"])
ADDRESSES = st.builds("{}{}".format, st.sampled_from(["10.0.1.", "10.0.0.", "255.255.255.", "0.0.0."]),
                      st.sampled_from([0, 1, 3, 4, 5, 15, 16, 20, 255]) | st.integers(0, 255))


WELL_SHAPED = st.fixed_dictionaries(
    {
        "hosts": st.lists(st.fixed_dictionaries({"name": NAMES}, optional={"offload": st.booleans()}),
                          min_size=1, max_size=3),
        "vpcs": st.lists(st.fixed_dictionaries(
            {
                "name": NAMES,
                "cidr": CIDRS,
                "subnets": st.lists(st.fixed_dictionaries({"name": NAMES, "cidr": CIDRS}), max_size=3),
                "instances": st.lists(st.fixed_dictionaries(
                    {"name": st.from_regex(r"[a-z][0-9]", fullmatch=True),
                     "subnet": st.sampled_from(["a", "b"]), "host": st.sampled_from(["a", "b"])},
                    optional={"ip": ADDRESSES, "source_dest_check": st.booleans()}), max_size=14),
            },
            optional={"vni": st.integers(1, 4)}), max_size=3),
    },
    optional={"underlay_mtu": st.integers(1200, 70000)},
)


@settings(max_examples=300, deadline=None)
@given(ANY_YAML | WELL_SHAPED)
def test_any_input_either_parses_or_raises_topology_error(data):
    try:
        parse_topology(data)
    except TopologyError as e:
        assert str(e)
