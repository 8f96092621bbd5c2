import copy
import hashlib
import ipaddress
import pathlib
import re
import textwrap

import pytest
import yaml
from hypothesis import given, settings, strategies as st

import vswitch.topology
from vswitch.topology import (
    ALLOW_ALL_EGRESS, ConnectionTracking, FlowLog, HealthCheck, Host, InternetGateway, Listener, LoadBalancer,
    NatGateway, NetworkAcl, NetworkAclEntry, Route, RouteTable, SecurityGroup, SecurityGroupRule, Subnet, Target,
    TargetGroup, Topology, TopologyError, load_topology, parse_topology, reserved_addresses,
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


# Every line of a refusal starts with the field's path (keys may hold digits: ipv6_cidr).
PATH = r"[a-z_][a-z0-9_]*(\[\d+\])?(\.[a-z_][a-z0-9_]*(\[\d+\])?)*: "
TOP_OR_PATH = r"(top level|[a-z_][a-z0-9_]*(\[\d+\])?(\.[a-z_][a-z0-9_]*(\[\d+\])?)*): "


def assert_refused(data, expected: list[str], line_start: str = PATH) -> None:
    """``data`` is refused; the message holds every part of ``expected`` and each of its lines names a field."""
    with pytest.raises(TopologyError) as e:
        parse_topology(data)
    message = str(e.value)
    for part in expected:
        assert part in message, message
    assert all(re.match(line_start, line) for line in message.splitlines()), message


@pytest.mark.parametrize("change,expected", ERRORS.values(), ids=ERRORS.keys())
def test_invalid_topology_names_the_field_and_value(change, expected):
    data = copy.deepcopy(demo())
    change(data)
    assert_refused(data, expected, TOP_OR_PATH)


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


# --- policy: security groups, network ACLs, connection tracking, flow logs ------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_parses(path):
    assert load_topology(path).vpcs


def test_the_policy_example():
    (vpc,) = load_topology(CONFIGS / "policy.yaml").vpcs
    assert [g.name for g in vpc.security_groups] == ["web", "ops"]
    assert SecurityGroupRule("tcp", 8080, 8080, "10.0.1.0/24", description="the app subnet") in \
        vpc.security_group("web").ingress
    assert vpc.subnet("ops").network_acl == "ops" and vpc.subnet("app").network_acl == "default"
    assert [(f.resource, f.traffic_type) for f in vpc.flow_logs] == [("instance/web", "REJECT")]


def policy() -> dict:
    """demo() with policy of every kind."""
    data = demo()
    vpc = data["vpcs"][0]
    vpc["subnets"].append({"name": "ops", "cidr": "10.0.2.0/24", "network_acl": "strict"})
    vpc["instances"][0]["security_groups"] = ["web", "default"]
    vpc["instances"][1]["connection_tracking"] = {"tcp_established_timeout": 3600, "max_tracked_flows": 10000}
    vpc["security_groups"] = [
        {"name": "web", "description": "web servers", "ingress": [
            {"protocol": "tcp", "ports": 8080, "cidr": "10.0.0.0/16"},
            {"protocol": "tcp", "ports": 22, "source_group": "admin"},
            {"protocol": "icmp", "icmp_type": 8, "cidr": "0.0.0.0/0"}]},
        {"name": "admin"},
    ]
    vpc["network_acls"] = [{"name": "strict", "entries": [
        {"rule": 100, "action": "allow", "protocol": "tcp", "ports": 80, "cidr": "0.0.0.0/0"},
        {"rule": 100, "egress": True, "action": "allow", "cidr": "0.0.0.0/0"}]}]
    vpc["flow_logs"] = [
        {"name": "all", "resource": "vpc", "traffic_type": "ALL", "interval": 60},
        {"name": "rejects", "resource": "instance/web", "traffic_type": "REJECT", "interval": 1,
         "log_format": "${version} ${srcaddr} ${action}"},
        {"name": "ops", "resource": "subnet/ops"},
    ]
    return data


def test_policy_defaults():
    (vpc,) = parse_topology(demo()).vpcs
    assert (vpc.security_groups, vpc.network_acls, vpc.flow_logs) == ((), (), ())
    assert vpc.subnet("app").network_acl == "default"
    for inst in vpc.instances:
        assert inst.security_groups == ("default",)
        assert inst.connection_tracking == ConnectionTracking(432000, 180, 30, 65536)  # the API's defaults


def test_every_policy_key():
    t = parse_topology(policy())
    (vpc,) = t.vpcs
    assert vpc.security_groups == (
        SecurityGroup("web", "web servers", ingress=(
            SecurityGroupRule("tcp", 8080, 8080, "10.0.0.0/16"),
            SecurityGroupRule("tcp", 22, 22, source_group="admin"),
            SecurityGroupRule("icmp", 8, -1, "0.0.0.0/0"),
        ), egress=ALLOW_ALL_EGRESS),
        SecurityGroup("admin", None, (), ALLOW_ALL_EGRESS),
    )
    assert ALLOW_ALL_EGRESS == (SecurityGroupRule("-1", -1, -1, "0.0.0.0/0"),)
    assert vpc.network_acls == (NetworkAcl("strict", (
        NetworkAclEntry(100, "allow", "0.0.0.0/0", False, "tcp", 80, 80),
        NetworkAclEntry(100, "allow", "0.0.0.0/0", True, "-1", -1, -1))),)
    assert vpc.subnet("ops") == Subnet("ops", ipaddress.IPv4Network("10.0.2.0/24"), "strict")
    assert t.instance("web").security_groups == ("web", "default")
    assert t.instance("client").connection_tracking == ConnectionTracking(3600, 180, 30, 10000)
    assert vpc.flow_logs == (FlowLog("all", "vpc", "ALL", 60), FlowLog("rejects", "instance/web", "REJECT", 1,
                                                                        "${version} ${srcaddr} ${action}"),
                             FlowLog("ops", "subnet/ops", "ALL", 600, None))
    assert vpc.security_group("admin").ingress == () and vpc.network_acl("strict").entries[0].rule == 100
    with pytest.raises(KeyError):
        vpc.security_group("nope")
    with pytest.raises(KeyError):
        vpc.network_acl("nope")


RULE_FORMS = [  # (the rule as written, less its peer) -> (protocol, from_port, to_port) as the API records it
    ({}, ("-1", -1, -1)),
    ({"protocol": "all"}, ("all", -1, -1)),
    ({"protocol": -1}, ("-1", -1, -1)),
    ({"protocol": "tcp"}, ("tcp", 0, 65535)),  # a group rule for tcp without ports: every port
    ({"protocol": "udp", "ports": 53}, ("udp", 53, 53)),
    ({"protocol": "tcp", "ports": "8000-8100"}, ("tcp", 8000, 8100)),
    ({"protocol": 6, "ports": " 80 - 81 "}, ("6", 80, 81)),
    ({"protocol": "17", "ports": "0-65535"}, ("17", 0, 65535)),
    ({"protocol": "tcp", "from_port": 10, "to_port": 20}, ("tcp", 10, 20)),
    ({"protocol": "icmp"}, ("icmp", -1, -1)),
    ({"protocol": "icmp", "icmp_type": 3, "icmp_code": 4}, ("icmp", 3, 4)),
    ({"protocol": "icmpv6", "icmp_code": 0}, ("icmpv6", -1, 0)),
    ({"protocol": "icmp", "from_port": 8, "to_port": -1}, ("icmp", 8, -1)),
    ({"protocol": 47}, ("47", -1, -1)),
    ({"protocol": 0}, ("0", -1, -1)),
]


@pytest.mark.parametrize("rule,expected", RULE_FORMS, ids=[str(r) for r, _ in RULE_FORMS])
def test_rule_and_entry_forms(rule, expected):
    data = policy()
    vpc = data["vpcs"][0]
    vpc["security_groups"][1]["ingress"] = [{**rule, "cidr": "10.0.0.0/16", "description": "x"}]
    vpc["network_acls"][0]["entries"] = [{**rule, "rule": 1, "action": "deny", "cidr": "10.0.0.0/16"}]
    (parsed,) = parse_topology(data).vpcs
    assert parsed.security_group("admin").ingress == (SecurityGroupRule(*expected, "10.0.0.0/16", None, "x"),)
    protocol, first, last = expected
    if (protocol, first, last) == ("tcp", 0, 65535) and "from_port" not in rule:
        first = last = -1  # an ACL entry without ports: the API's default, -1, every port
    assert parsed.network_acl("strict").entries == (NetworkAclEntry(1, "deny", "10.0.0.0/16", False, protocol,
                                                                    first, last),)


def test_cidrs_are_normalized_as_the_api_records_them():
    data = policy()
    data["vpcs"][0]["security_groups"][1]["ingress"] = [{"cidr": "FD00::/8"}, {"cidr": "::/0"}]
    assert [r.cidr for r in parse_topology(data).vpcs[0].security_group("admin").ingress] == ["fd00::/8", "::/0"]


def test_egress_given_empty_is_none_and_absent_is_the_api_default():
    data = policy()
    data["vpcs"][0]["security_groups"][1]["egress"] = []
    (vpc,) = parse_topology(data).vpcs
    assert vpc.security_group("admin").egress == () and vpc.security_group("web").egress == ALLOW_ALL_EGRESS


def test_default_names_the_vpcs_default_group_and_acl():
    data = policy()
    vpc = data["vpcs"][0]
    vpc["security_groups"].append({"name": "default"})
    vpc["network_acls"].append({"name": "default"})
    vpc["network_acls"].append({"name": "empty"})
    vpc["instances"][1]["security_groups"] = ["default"]
    vpc["subnets"][0]["network_acl"] = "default"
    (parsed,) = parse_topology(data).vpcs
    # Named without rules: left as it is (None), unlike a group or ACL of the file's own (none, deny all).
    assert parsed.security_group("default") == SecurityGroup("default", None, None, None)
    assert parsed.network_acl("default") == NetworkAcl("default", None)
    assert parsed.network_acl("empty") == NetworkAcl("empty", ())
    vpc["security_groups"][-1] = {"name": "default", "ingress": [{"source_group": "web"}]}
    vpc["network_acls"][-2] = {"name": "default", "entries": [{"rule": 1, "action": "deny", "cidr": "0.0.0.0/0"}]}
    (parsed,) = parse_topology(data).vpcs
    assert parsed.security_group("default") == SecurityGroup("default", None, (
        SecurityGroupRule(source_group="web"),), None)
    assert parsed.network_acl("default").entries == (NetworkAclEntry(1, "deny", "0.0.0.0/0"),)
    # Groups of one VPC are not those of another.
    data["vpcs"].append({"name": "other", "cidr": "10.0.0.0/16", "subnets": [{"name": "app", "cidr": "10.0.1.0/24"}],
                         "instances": [{"name": "x", "subnet": "app", "host": "host-a", "security_groups": ["web"]}]})
    with pytest.raises(TopologyError, match=r"^vpcs\[1\]\.instances\[0\]\.security_groups\[0\]: unknown group 'web' "
                                            r"in VPC 'other' \(groups: default\)$"):
        parse_topology(data)


def _rule(**rule):
    """Replace the first ingress rule of group web."""
    return _set("vpcs.0.security_groups.0.ingress.0", rule)


def _entry(**entry):
    """Replace the first entry of ACL strict."""
    return _set("vpcs.0.network_acls.0.entries.0", {"rule": 1, "action": "allow", "cidr": "0.0.0.0/0", **entry})


def _flow_log(**fl):
    return _set("vpcs.0.flow_logs.0", {"name": "all", "resource": "vpc", **fl})


def _append(path: str, value):
    def change(data):
        for p in [int(p) if p.isdigit() else p for p in path.split(".")]:
            data = data[p]
        data.append(value)
    return change


G, E, I, F = "vpcs[0].security_groups[0]", "vpcs[0].network_acls[0]", "vpcs[0].instances", "vpcs[0].flow_logs[0]"
NET = "10.0.0.0/16"
POLICY_ERRORS = {
    # shape (first pass)
    "unknown group key": (_set("vpcs.0.security_groups.0.colour", "red"),
                          [f"{G}: unknown key 'colour' (allowed: name, description, ingress, egress)"]),
    "unknown rule key": (_rule(protocol="tcp", port=80, cidr=NET), [f"{G}.ingress[0]: unknown key 'port'", "ports"]),
    "unknown egress rule key": (_set("vpcs.0.security_groups.1.egress", [{"cidr": NET, "peer": "x"}]),
                                ["vpcs[0].security_groups[1].egress[0]: unknown key 'peer'", "source_group"]),
    "unknown acl key": (_set("vpcs.0.network_acls.0.rules", []), [f"{E}: unknown key 'rules'", "entries"]),
    "api spelling of rule number": (_entry(rule_number=5), [f"{E}.entries[0]: unknown key 'rule_number'", "rule"]),
    "unknown flow log key": (_flow_log(format="x"), [f"{F}: unknown key 'format'", "log_format"]),
    "unknown conntrack key": (_set("vpcs.0.instances.1.connection_tracking.tcp_timeout", 60),
                              [f"{I}[1].connection_tracking: unknown key 'tcp_timeout'", "udp_timeout"]),
    "group name bad": (_set("vpcs.0.security_groups.0.name", "Web"), [f"{G}.name: 'Web'"]),
    "group name missing": (_delete("vpcs.0.security_groups.1.name"), ["vpcs[0].security_groups[1].name: required"]),
    "acl name bad": (_set("vpcs.0.network_acls.0.name", "a b"), [f"{E}.name: 'a b'"]),
    "flow log name bad": (_flow_log(name="x" * 21), [f"{F}.name: '{'x' * 21}'"]),
    "rules not a list": (_set("vpcs.0.security_groups.0.ingress", {"cidr": NET}), [f"{G}.ingress: ", "valid list"]),
    "rule not a mapping": (_set("vpcs.0.security_groups.0.ingress.0", "tcp 80"),
                           [f"{G}.ingress[0]: expected a mapping"]),
    "two peers": (_rule(cidr=NET, source_group="admin"),
                  [f"{G}.ingress[0]: a rule names exactly one peer: cidr or source_group"]),
    "no peer": (_rule(protocol="tcp", ports=80), [f"{G}.ingress[0]: a rule names exactly one peer"]),
    "ports and from_port": (_rule(protocol="tcp", ports=80, from_port=80, cidr=NET),
                            [f"{G}.ingress[0]: give ports or from_port/to_port, not both"]),
    "icmp_type and to_port": (_rule(protocol="icmp", icmp_type=8, to_port=0, cidr=NET),
                              [f"{G}.ingress[0]: give icmp_type/icmp_code or from_port/to_port, not both"]),
    "icmp_type on tcp": (_rule(protocol="tcp", icmp_type=8, cidr=NET),
                         [f"{G}.ingress[0]: icmp_type/icmp_code apply to icmp and icmpv6 only, not to protocol tcp"]),
    "ports on icmp": (_rule(protocol="icmp", ports=8, cidr=NET), [f"{G}.ingress[0]: ports apply to tcp and udp only"]),
    "ports on all in an entry": (_entry(ports=80),
                                 [f"{E}.entries[0]: ports apply to tcp and udp only, not to protocol -1"]),
    "ports a word": (_rule(protocol="tcp", ports="http", cidr=NET), [f"{G}.ingress[0].ports: ", "'http'"]),
    "ports reversed": (_rule(protocol="tcp", ports="90-80", cidr=NET), [f"{G}.ingress[0].ports: 90-80"]),
    "ports too high": (_rule(protocol="tcp", ports=65536, cidr=NET), [f"{G}.ingress[0].ports: 65536"]),
    "ports negative": (_rule(protocol="tcp", ports=-1, cidr=NET), [f"{G}.ingress[0].ports: -1"]),
    "ports a bool": (_rule(protocol="tcp", ports=True, cidr=NET), [f"{G}.ingress[0].ports: ", "True"]),
    "ports a list": (_rule(protocol="tcp", ports=[80, 81], cidr=NET), [f"{G}.ingress[0].ports: ", "[80, 81]"]),
    "protocol unknown": (_rule(protocol="sctp", cidr=NET), [f"{G}.ingress[0].protocol: 'sctp' is not a protocol"]),
    "protocol upper case": (_rule(protocol="TCP", cidr=NET), [f"{G}.ingress[0].protocol: 'TCP'"]),
    "protocol too large": (_rule(protocol=256, cidr=NET), [f"{G}.ingress[0].protocol: 256"]),
    "protocol string too large": (_entry(protocol="300"), [f"{E}.entries[0].protocol: '300'"]),
    "protocol below -1": (_rule(protocol=-2, cidr=NET), [f"{G}.ingress[0].protocol: -2"]),
    "protocol a bool": (_rule(protocol=True, cidr=NET), [f"{G}.ingress[0].protocol: True"]),
    "icmp type too large": (_rule(protocol="icmp", icmp_type=256, cidr=NET), [f"{G}.ingress[0].icmp_type: ", "256"]),
    "icmp code below -1": (_rule(protocol="icmp", icmp_code=-2, cidr=NET), [f"{G}.ingress[0].icmp_code: ", "-2"]),
    "from_port a string": (_rule(protocol="tcp", from_port="80", to_port=80, cidr=NET),
                           [f"{G}.ingress[0].from_port: ", "'80'"]),
    "cidr not a string": (_rule(cidr=10), [f"{G}.ingress[0].cidr: ", "got 10"]),
    "description not a string": (_set("vpcs.0.security_groups.0.description", 5), [f"{G}.description: ", "got 5"]),
    "rule number missing": (_set("vpcs.0.network_acls.0.entries.0", {"action": "allow", "cidr": NET}),
                            [f"{E}.entries[0].rule: required"]),
    "rule number a string": (_entry(rule="100"), [f"{E}.entries[0].rule: ", "'100'"]),
    "action missing": (_set("vpcs.0.network_acls.0.entries.0", {"rule": 1, "cidr": NET}),
                       [f"{E}.entries[0].action: required"]),
    "entry cidr missing": (_set("vpcs.0.network_acls.0.entries.0", {"rule": 1, "action": "allow"}),
                           [f"{E}.entries[0].cidr: required"]),
    "egress not a bool": (_entry(egress="yes"), [f"{E}.entries[0].egress: ", "'yes'"]),
    "groups not a list": (_set("vpcs.0.instances.0.security_groups", "web"), [f"{I}[0].security_groups: ", "'web'"]),
    "conntrack not a mapping": (_set("vpcs.0.instances.1.connection_tracking", 3600),
                                [f"{I}[1].connection_tracking: expected a mapping"]),
    "conntrack value a string": (_set("vpcs.0.instances.1.connection_tracking.udp_timeout", "40"),
                                 [f"{I}[1].connection_tracking.udp_timeout: ", "'40'"]),
    "udp timeout too long": (_set("vpcs.0.instances.1.connection_tracking.udp_timeout", 61),
                             [f"{I}[1].connection_tracking.udp_timeout: ", "60", "got 61"]),
    "udp stream timeout too short": (_set("vpcs.0.instances.1.connection_tracking.udp_stream_timeout", 59),
                                     [f"{I}[1].connection_tracking.udp_stream_timeout: ", "got 59"]),
    "tcp timeout too long": (_set("vpcs.0.instances.1.connection_tracking.tcp_established_timeout", 432001),
                             [f"{I}[1].connection_tracking.tcp_established_timeout: ", "got 432001"]),
    "no flows tracked": (_set("vpcs.0.instances.1.connection_tracking.max_tracked_flows", 0),
                         [f"{I}[1].connection_tracking.max_tracked_flows: ", "got 0"]),
    "network_acl not a string": (_set("vpcs.0.subnets.1.network_acl", None), ["vpcs[0].subnets[1].network_acl: "]),
    "flow log resource missing": (_delete("vpcs.0.flow_logs.0.resource"), [f"{F}.resource: required"]),
    "interval a string": (_flow_log(interval="60"), [f"{F}.interval: ", "'60'"]),
    # the file as a whole (second pass)
    "duplicate group": (_append("vpcs.0.security_groups", {"name": "web"}),
                        ["vpcs[0].security_groups[2].name: duplicate group name 'web'", f"{G}.name"]),
    "duplicate default group": (lambda d: _append("vpcs.0.security_groups", {"name": "default"})(d) or
                                _append("vpcs.0.security_groups", {"name": "default"})(d),
                                ["vpcs[0].security_groups[3].name: duplicate group name 'default'"]),
    "duplicate acl": (_append("vpcs.0.network_acls", {"name": "strict"}),
                      ["vpcs[0].network_acls[1].name: duplicate network ACL name 'strict'"]),
    "duplicate flow log": (_append("vpcs.0.flow_logs", {"name": "rejects", "resource": "vpc"}),
                           ["vpcs[0].flow_logs[3].name: duplicate flow log name 'rejects'",
                            "vpcs[0].flow_logs[1].name"]),
    "unknown source group": (_set("vpcs.0.security_groups.0.ingress.1.source_group", "adm"),
                             [f"{G}.ingress[1].source_group: unknown group 'adm' in VPC 'demo' "
                              "(groups: default, web, admin)"]),
    "unknown egress source group": (_set("vpcs.0.security_groups.1.egress", [{"source_group": "nope"}]),
                                    ["vpcs[0].security_groups[1].egress[0].source_group: unknown group 'nope'"]),
    "tcp ports reversed (the API's rule)": (_rule(protocol="tcp", from_port=90, to_port=80, cidr=NET),
                                            [f"{G}.ingress[0]: tcp/udp rules need 0 <= from_port <= to_port"]),
    "ports on all (the API's rule)": (_rule(from_port=80, to_port=80, cidr=NET),
                                      [f"{G}.ingress[0]: ports apply to tcp, udp and icmp only"]),
    "icmp type above 255 by from_port (the API's rule)": (
        _rule(protocol="icmp", from_port=300, to_port=-1, cidr=NET), [f"{G}.ingress[0]: icmp rules carry the type"]),
    "to_port too large (the API's range)": (_rule(protocol="tcp", from_port=0, to_port=70000, cidr=NET),
                                            [f"{G}.ingress[0].to_port: ", "65535", "got 70000"]),
    "entry from_port too small (the API's range)": (_entry(protocol="tcp", from_port=-2, to_port=80),
                                                    [f"{E}.entries[0].from_port: ", "got -2"]),
    "cidr host bits": (_rule(cidr="10.0.0.1/16"), [f"{G}.ingress[0].cidr: '10.0.0.1/16' is not a CIDR block"]),
    "cidr not a cidr": (_entry(cidr="everywhere"), [f"{E}.entries[0].cidr: 'everywhere'"]),
    "rule description too long": (_rule(cidr=NET, description="d" * 256),
                                  [f"{G}.ingress[0].description: ", "255 characters"]),
    "group description too long": (_set("vpcs.0.security_groups.0.description", "d" * 256),
                                   [f"{G}.description: ", "255 characters"]),
    "too many rules": (_set("vpcs.0.security_groups.0.ingress", [{"cidr": NET}] * 1001),
                       [f"{G}.ingress: List should have at most"]),
    "duplicate rule number": (_append("vpcs.0.network_acls.0.entries",
                                      {"rule": 100, "action": "deny", "cidr": NET}),
                              [f"{E}.entries[2].rule: duplicate ingress rule number 100 (first used at "
                               f"{E}.entries[0].rule)"]),
    "duplicate egress rule number": (_append("vpcs.0.network_acls.0.entries",
                                             {"rule": 100, "egress": True, "action": "deny", "cidr": NET}),
                                     [f"{E}.entries[2].rule: duplicate egress rule number 100"]),
    "rule number zero": (_entry(rule=0), [f"{E}.entries[0].rule: ", "greater than or equal to 1", "got 0"]),
    "rule number too large": (_entry(rule=32767), [f"{E}.entries[0].rule: ", "32766", "got 32767"]),
    "action unknown": (_entry(action="permit"), [f"{E}.entries[0].action: ", "'allow' or 'deny'", "'permit'"]),
    "too many entries": (_set("vpcs.0.network_acls.0.entries",
                              [{"rule": n, "action": "allow", "cidr": NET} for n in range(1, 1002)]),
                         [f"{E}.entries: ", "should have at most"]),
    "unknown network acl": (_set("vpcs.0.subnets.1.network_acl", "stric"),
                            ["vpcs[0].subnets[1].network_acl: unknown network ACL 'stric' in VPC 'demo' "
                             "(network ACLs: default, strict)"]),
    "unknown instance group": (_set("vpcs.0.instances.0.security_groups", ["web", "db"]),
                               [f"{I}[0].security_groups[1]: unknown group 'db' in VPC 'demo'"]),
    "duplicate instance group": (_set("vpcs.0.instances.0.security_groups", ["web", "default", "web"]),
                                 [f"{I}[0].security_groups[2]: duplicate group 'web' (first used at "
                                  f"{I}[0].security_groups[0])"]),
    "no instance group": (_set("vpcs.0.instances.0.security_groups", []),
                          [f"{I}[0].security_groups: List should have at least 1 item"]),
    "six instance groups": (lambda d: [_append("vpcs.0.security_groups", {"name": f"g{n}"})(d) for n in range(5)]
                            and _set("vpcs.0.instances.0.security_groups", ["web", "g0", "g1", "g2", "g3", "g4"])(d),
                            [f"{I}[0].security_groups: List should have at most 5 items"]),
    "flow log resource unknown kind": (_flow_log(resource="eni/web"),
                                       [f"{F}.resource: 'eni/web' is not vpc, subnet/NAME or instance/NAME"]),
    "flow log resource without name": (_flow_log(resource="subnet/"), [f"{F}.resource: 'subnet/' is not"]),
    "flow log unknown subnet": (_flow_log(resource="subnet/db"),
                                [f"{F}.resource: unknown subnet 'db' in VPC 'demo' (subnets: app, ops)"]),
    "flow log unknown instance": (_flow_log(resource="instance/nope"),
                                  [f"{F}.resource: unknown instance 'nope' in VPC 'demo' (instances: web, client)"]),
    "flow log instance of another vpc": (
        lambda d: _add_vpc(name="other", subnets=[{"name": "app", "cidr": "10.0.1.0/24"}],
                           instances=[{"name": "x", "subnet": "app", "host": "host-a"}],
                           flow_logs=[{"name": "x", "resource": "instance/web"}])(d),
        ["vpcs[1].flow_logs[0].resource: unknown instance 'web' in VPC 'other' (instances: x)"]),
    "traffic type unknown": (_flow_log(traffic_type="all"), [f"{F}.traffic_type: ", "'ALL'", "got 'all'"]),
    "interval zero": (_flow_log(interval=0), [f"{F}.interval: ", "got 0"]),
    "interval too long": (_flow_log(interval=601), [f"{F}.interval: ", "600", "got 601"]),
    "log format unknown field": (_flow_log(log_format="${version} ${colour}"),
                                 [f"{F}.log_format: unknown flow log fields ['colour']"]),
    "log format empty": (_flow_log(log_format=""), [f"{F}.log_format: unknown flow log fields []"]),
}


@pytest.mark.parametrize("change,expected", POLICY_ERRORS.values(), ids=POLICY_ERRORS.keys())
def test_invalid_policy_names_the_field_and_value(change, expected):
    data = policy()
    change(data)
    assert_refused(data, expected)


def test_every_policy_problem_is_reported_with_its_path():
    data = policy()
    vpc = data["vpcs"][0]
    vpc["subnets"][1]["network_acl"] = "nope"
    vpc["instances"][0]["security_groups"] = ["adm"]
    vpc["security_groups"][0]["ingress"][1]["source_group"] = "adm"
    vpc["security_groups"][0]["ingress"][2]["icmp_type"] = 8
    vpc["security_groups"][0]["ingress"][0]["cidr"] = "10.0.0.1/16"
    vpc["network_acls"][0]["entries"][1]["egress"] = False
    vpc["network_acls"][0]["entries"][1]["action"] = "permit"
    vpc["flow_logs"][1]["interval"] = 0
    lines = str(pytest.raises(TopologyError, parse_topology, data).value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "vpcs[0].subnets[1].network_acl", "vpcs[0].instances[0].security_groups[0]",
        "vpcs[0].security_groups[0].ingress[1].source_group", "vpcs[0].security_groups[0].ingress[0].cidr",
        "vpcs[0].network_acls[0].entries[1].rule", "vpcs[0].network_acls[0].entries[1].action",
        "vpcs[0].flow_logs[1].interval"]


# --- the internet: gateways, route tables, elastic IPs ---------------------------------------------------


def internet() -> dict:
    """demo() on the internet: web public (its subnet routed to the gateway, an elastic IP), client private."""
    data = demo()
    vpc = data["vpcs"][0]
    vpc["internet_gateway"] = True
    vpc["route_tables"] = [{"name": "public", "routes": [
        {"destination": "0.0.0.0/0", "target": "internet_gateway"},
        {"destination": "10.1.0.0/24", "target": "instance/client"}]}]
    vpc["subnets"] = [{"name": "app", "cidr": "10.0.1.0/24", "route_table": "public"},
                      {"name": "db", "cidr": "10.0.2.0/24"}]
    vpc["instances"][0]["elastic_ip"] = True
    vpc["instances"][1]["subnet"] = "db"
    return data


def test_the_internet_example():
    (vpc,) = load_topology(CONFIGS / "internet.yaml").vpcs
    assert vpc.internet_gateway == InternetGateway("demo-igw")
    assert vpc.route_tables == (RouteTable("public", (Route("0.0.0.0/0", "internet_gateway"),)),)
    assert vpc.subnet("public").route_table == "public" and vpc.subnet("private").route_table == "main"
    assert [(i.name, i.elastic_ip) for i in vpc.instances] == [("web", True), ("client", False)]


def test_the_docstring_example_parses():
    example = textwrap.dedent(vswitch.topology.__doc__.split("::\n", 1)[1].split("\n\n", 1)[0])
    (vpc,) = parse_topology(yaml.safe_load(example)).vpcs
    assert vpc.internet_gateway == InternetGateway("demo-igw") and vpc.instances[0].elastic_ip
    assert vpc.route_table("main").routes == (Route("192.168.0.0/16", "instance/db"),)
    assert vpc.nat_gateways == (NatGateway("nat", "app"), NatGateway("inner", "ops", "private", IP("10.0.2.200")))
    assert vpc.target_group("web").targets == (Target(8080, "web"), Target(8081, "client"),
                                               Target(8080, ip=IP("10.0.1.50")))
    assert vpc.load_balancer("lb") == LoadBalancer("lb", ("app",), (Listener("tcp", 80, "web"),), IP("10.0.1.100"))


def test_internet_defaults():
    (vpc,) = parse_topology(demo()).vpcs
    assert (vpc.internet_gateway, vpc.route_tables) == (None, ())
    assert vpc.subnet("app").route_table == "main"
    assert not any(i.elastic_ip for i in vpc.instances)
    data = demo()
    data["vpcs"][0]["internet_gateway"] = False
    assert parse_topology(data).vpcs[0].internet_gateway is None


def test_every_internet_key():
    data = internet()
    vpc = data["vpcs"][0]
    vpc["internet_gateway"] = {"name": "gw"}
    vpc["route_tables"] += [{"name": "empty"}, {"name": "main"}, {"name": "six", "routes": [
        {"destination": "FD00::/8", "target": "instance/web"}, {"destination": "::/0", "target": "internet_gateway"},
        {"destination": "10.0.2.0/24", "target": "instance/web"}]}]
    (parsed,) = parse_topology(data).vpcs
    assert parsed.internet_gateway == InternetGateway("gw")
    assert parsed.route_tables == (
        RouteTable("public", (Route("0.0.0.0/0", "internet_gateway"), Route("10.1.0.0/24", "instance/client"))),
        RouteTable("empty", ()),  # a table of the file's own: no routes but the local one
        RouteTable("main", None),  # the main table named without routes: left as it is
        RouteTable("six", (Route("fd00::/8", "instance/web"), Route("::/0", "internet_gateway"),
                           Route("10.0.2.0/24", "instance/web"))))  # normalized as the API records them
    assert parsed.subnet("app") == Subnet("app", ipaddress.IPv4Network("10.0.1.0/24"), "default", "public")
    assert parsed.subnet("db").route_table == "main"
    assert parsed.instances[0].elastic_ip and not parsed.instances[1].elastic_ip
    assert parsed.route_table("empty").routes == ()
    with pytest.raises(KeyError):
        parsed.route_table("nope")
    vpc["route_tables"][2]["routes"] = []
    vpc["internet_gateway"] = {}
    (parsed,) = parse_topology(data).vpcs
    assert parsed.route_table("main").routes == () and parsed.internet_gateway == InternetGateway("demo-igw")


R, T = "vpcs[0].route_tables[0]", "vpcs[0].route_tables[0].routes"


def _route(n: int, **route):
    """Replace route n of table public."""
    return _set(f"vpcs.0.route_tables.0.routes.{n}", route)


INTERNET_ERRORS = {
    # shape (first pass)
    "gateway a string": (_set("vpcs.0.internet_gateway", "gw"),
                         ["vpcs[0].internet_gateway: expected true, false or a mapping such as {name: gw}, got 'gw'"]),
    "gateway null": (_set("vpcs.0.internet_gateway", None), ["vpcs[0].internet_gateway: expected true, false"]),
    "gateway a number": (_set("vpcs.0.internet_gateway", 1), ["vpcs[0].internet_gateway: ", "got 1"]),
    "unknown gateway key": (_set("vpcs.0.internet_gateway", {"id": "igw-1"}),
                            ["vpcs[0].internet_gateway: unknown key 'id' (allowed: name)"]),
    "gateway name bad": (_set("vpcs.0.internet_gateway", {"name": "My GW"}),
                         ["vpcs[0].internet_gateway.name: 'My GW' is not a valid name"]),
    "unknown table key": (_set("vpcs.0.route_tables.0.main", True),
                          [f"{R}: unknown key 'main' (allowed: name, routes)"]),
    "unknown route key": (_route(0, destination="0.0.0.0/0", gateway_id="igw-1"),
                          [f"{T}[0]: unknown key 'gateway_id' (allowed: destination, target)",
                           f"{T}[0].target: required"]),
    "table name missing": (_delete("vpcs.0.route_tables.0.name"), [f"{R}.name: required"]),
    "table name bad": (_set("vpcs.0.route_tables.0.name", "Public"), [f"{R}.name: 'Public'"]),
    "routes not a list": (_set("vpcs.0.route_tables.0.routes", {"destination": "0.0.0.0/0"}),
                          [f"{T}: ", "valid list"]),
    "destination missing": (_route(0, target="internet_gateway"), [f"{T}[0].destination: required"]),
    "destination not a string": (_route(0, destination=0, target="internet_gateway"),
                                 [f"{T}[0].destination: ", "got 0"]),
    "route_table not a string": (_set("vpcs.0.subnets.0.route_table", ["public"]),
                                 ["vpcs[0].subnets[0].route_table: ", "['public']"]),
    "elastic_ip not a bool": (_set("vpcs.0.instances.0.elastic_ip", "yes"),
                              ["vpcs[0].instances[0].elastic_ip: ", "'yes'"]),
    # the file as a whole (second pass)
    "duplicate table": (_append("vpcs.0.route_tables", {"name": "public"}),
                        ["vpcs[0].route_tables[1].name: duplicate route table name 'public' (first used at "
                         f"{R}.name)"]),
    "duplicate main table": (lambda d: _append("vpcs.0.route_tables", {"name": "main"})(d) or
                             _append("vpcs.0.route_tables", {"name": "main"})(d),
                             ["vpcs[0].route_tables[2].name: duplicate route table name 'main'"]),
    "unknown route table": (_set("vpcs.0.subnets.1.route_table", "pubic"),
                            ["vpcs[0].subnets[1].route_table: unknown route table 'pubic' in VPC 'demo' "
                             "(route tables: main, public)"]),
    "route table of another vpc": (
        _add_vpc(name="other", subnets=[{"name": "app", "cidr": "10.0.1.0/24", "route_table": "public"}]),
        ["vpcs[1].subnets[0].route_table: unknown route table 'public' in VPC 'other' (route tables: main)"]),
    "elastic ip without a gateway": (_delete("vpcs.0.internet_gateway"),
                                     ["vpcs[0].instances[0].elastic_ip: an elastic IP needs the VPC's internet "
                                      "gateway, and VPC 'demo' has none"]),
    "elastic ip with the gateway false": (_set("vpcs.0.internet_gateway", False),
                                          ["vpcs[0].instances[0].elastic_ip: "]),
    "route to a gateway the vpc lacks": (
        lambda d: _set("vpcs.0.internet_gateway", False)(d) or _set("vpcs.0.instances.0.elastic_ip", False)(d),
        [f"{T}[0].target: internet_gateway is the VPC's internet gateway, and VPC 'demo' has none"]),
    "route to an unknown instance": (_route(1, destination="10.1.0.0/24", target="instance/nope"),
                                     [f"{T}[1].target: unknown instance 'nope' in VPC 'demo' (instances: web, "
                                      "client)"]),
    "route to an instance of another vpc": (
        _add_vpc(name="other", route_tables=[{"name": "t", "routes": [
            {"destination": "0.0.0.0/0", "target": "instance/web"}]}]),
        ["vpcs[1].route_tables[0].routes[0].target: unknown instance 'web' in VPC 'other' (instances: none)"]),
    "route target unknown kind": (_route(0, destination="0.0.0.0/0", target="igw"),
                                  [f"{T}[0].target: 'igw' is not internet_gateway, egress_only_gateway, "
                                   "instance/NAME or nat_gateway/NAME"]),
    "route target without a name": (_route(0, destination="0.0.0.0/0", target="instance/"),
                                     [f"{T}[0].target: 'instance/' is not internet_gateway, egress_only_gateway, "
                                      "instance/NAME or nat_gateway/NAME"]),
    "destination not a cidr": (_route(0, destination="anywhere", target="internet_gateway"),
                               [f"{T}[0].destination: 'anywhere' is not a CIDR block"]),
    "destination host bits": (_route(0, destination="10.1.0.1/24", target="internet_gateway"),
                              [f"{T}[0].destination: '10.1.0.1/24' is not a CIDR block (host bits must be zero)"]),
    "duplicate destination": (_route(1, destination="0.0.0.0/0", target="instance/client"),
                              [f"{T}[1].destination: duplicate destination '0.0.0.0/0' (first used at "
                               f"{T}[0].destination)"]),
    "duplicate destination spelled otherwise": (
        lambda d: _route(0, destination="fd00::/8", target="internet_gateway")(d) or
        _route(1, destination="FD00:0::/8", target="instance/client")(d),
        [f"{T}[1].destination: duplicate destination 'fd00::/8'"]),
    "destination the vpc's cidr": (_route(1, destination="10.0.0.0/16", target="instance/client"),
                                   [f"{T}[1].destination: 10.0.0.0/16 is the VPC's CIDR: its route is the local "
                                    "route, which cannot be replaced"]),
    "destination inside the vpc, not a subnet": (
        _route(1, destination="10.0.3.0/24", target="instance/client"),
        [f"{T}[1].destination: 10.0.3.0/24 is more specific than the local route (10.0.0.0/16): only a route "
         "for a whole subnet's CIDR to an instance or a NAT gateway may be"]),
    "a subnet's cidr to the gateway": (_route(0, destination="10.0.2.0/24", target="internet_gateway"),
                                       [f"{T}[0].destination: 10.0.2.0/24 is more specific than the local route"]),
    "too many routes (the API's limit)": (
        _set("vpcs.0.route_tables.0.routes",
             [{"destination": f"10.{n}.0.0/16", "target": "instance/web"} for n in range(1, 52)]),
        [f"{T}: List should have at most 50 items"]),
}


@pytest.mark.parametrize("change,expected", INTERNET_ERRORS.values(), ids=INTERNET_ERRORS.keys())
def test_invalid_internet_keys_name_the_field_and_value(change, expected):
    data = internet()
    change(data)
    assert_refused(data, expected)


def test_a_subnets_cidr_may_be_routed_to_an_instance():
    data = internet()
    data["vpcs"][0]["route_tables"][0]["routes"].append({"destination": "10.0.2.0/24", "target": "instance/web"})
    assert Route("10.0.2.0/24", "instance/web") in parse_topology(data).vpcs[0].route_table("public").routes


def test_every_internet_problem_is_reported_with_its_path():
    data = internet()
    vpc = data["vpcs"][0]
    vpc["internet_gateway"] = False
    vpc["subnets"][1]["route_table"] = "private"
    vpc["route_tables"][0]["routes"] += [{"destination": "10.0.0.0/16", "target": "instance/web"},
                                         {"destination": "x", "target": "instance/x"}]
    vpc["route_tables"].append({"name": "public"})
    lines = str(pytest.raises(TopologyError, parse_topology, data).value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "vpcs[0].subnets[1].route_table", "vpcs[0].instances[0].elastic_ip", f"{T}[0].target",
        f"{T}[2].destination", f"{T}[3].target", f"{T}[3].destination", "vpcs[0].route_tables[1].name"]


# --- fuzzing: whatever the YAML holds, the only failure is TopologyError --------------------------------

KEYS = ["hosts", "vpcs", "underlay_mtu", "name", "offload", "cidr", "vni", "subnets", "instances",
        "subnet", "host", "ip", "source_dest_check", "security_groups", "network_acls", "flow_logs",
        "network_acl", "connection_tracking", "ingress", "egress", "entries", "protocol", "ports",
        "source_group", "rule", "action", "resource", "interval", "internet_gateway", "route_tables",
        "routes", "destination", "target", "route_table", "elastic_ip"]
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

# Policy from a few plausible values each, valid or not: every mix must parse or be refused by name.
PORTISH = st.sampled_from([-1, 0, 80, 255, 256, 65535, 70000, "80", "80-90", "90-80", "x", True, None])
RULES = st.lists(st.fixed_dictionaries({}, optional={
    "protocol": st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "all", "-1", -1, 6, 47, 256, "300", "TCP", 1.5]),
    "ports": PORTISH, "from_port": PORTISH, "to_port": PORTISH, "icmp_type": PORTISH, "icmp_code": PORTISH,
    "cidr": st.sampled_from(["10.0.0.0/16", "0.0.0.0/0", "::/0", "10.0.0.1/16", "x", 5]),
    "source_group": st.sampled_from(["a", "b", "default", "zz"]),
    "description": st.sampled_from(["", "d", "d" * 256]),
}), max_size=3)
ENTRIES = st.lists(st.fixed_dictionaries({}, optional={
    "rule": st.sampled_from([0, 1, 100, 32766, 32767, "1"]), "action": st.sampled_from(["allow", "deny", "x"]),
    "egress": st.booleans(), "protocol": st.sampled_from(["tcp", "icmp", "all", 17]), "ports": PORTISH,
    "icmp_type": PORTISH, "cidr": st.sampled_from(["0.0.0.0/0", "10.0.0.1/16"]),
}), max_size=4)


def _shaped(vpc: dict, vpc_optional: dict | None = None, subnet: dict | None = None,
            instance: dict | None = None):
    """Files of one host and up to two VPCs of 10.0.0.0/16, each with up to two subnets (``subnet``: their
    optional keys) and up to three instances (``instance``: theirs), and the VPC keys ``vpc`` (and
    ``vpc_optional``)."""
    return st.fixed_dictionaries({
        "hosts": st.just([{"name": "a"}]),
        "vpcs": st.lists(st.fixed_dictionaries({
            "name": NAMES,
            "cidr": st.just("10.0.0.0/16"),
            "subnets": st.lists(st.fixed_dictionaries(
                {"name": NAMES, "cidr": st.sampled_from(["10.0.1.0/24", "10.0.2.0/24"])}, optional=subnet), max_size=2),
            "instances": st.lists(st.fixed_dictionaries(
                {"name": st.from_regex(r"[a-z][0-9]", fullmatch=True), "subnet": NAMES, "host": st.just("a")},
                optional=instance), max_size=3),
            **vpc,
        }, optional=vpc_optional), max_size=2),
    })


POLICY_SHAPED = _shaped(subnet={"network_acl": st.sampled_from(["a", "default", "zz"])}, instance={
    "security_groups": st.lists(st.sampled_from(["a", "b", "default", "zz"]), max_size=6),
    "connection_tracking": st.dictionaries(
        st.sampled_from(["udp_timeout", "tcp_established_timeout", "max_tracked_flows", "x"]),
        st.sampled_from([0, 30, 60, 61, 3600, "60"]), max_size=3)}, vpc={
        "security_groups": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "default"])},
                                                          optional={"ingress": RULES, "egress": RULES,
                                                                    "description": st.just("d")}), max_size=3),
        "network_acls": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "default"])},
                                                       optional={"entries": ENTRIES}), max_size=2),
        "flow_logs": st.lists(st.fixed_dictionaries(
            {"name": NAMES, "resource": st.sampled_from(["vpc", "subnet/a", "instance/a1", "x/y", "subnet/"])},
            optional={"traffic_type": st.sampled_from(["ALL", "REJECT", "x"]), "interval": st.sampled_from([0, 1, 601]),
                      "log_format": st.sampled_from(["${version}", "${x}", ""])}), max_size=2),
})


# The internet keys from a few plausible values each, valid or not.
ROUTES = st.lists(st.fixed_dictionaries({}, optional={
    "destination": st.sampled_from(["0.0.0.0/0", "::/0", "10.0.0.0/16", "10.0.1.0/24", "10.0.1.0/25",
                                    "10.1.0.0/24", "10.1.0.1/24", "x", 5]),
    "target": st.sampled_from(["internet_gateway", "instance/a1", "instance/zz", "instance/", "igw", 1]),
}), max_size=3)
INTERNET_SHAPED = _shaped(
    subnet={"route_table": st.sampled_from(["a", "main", "zz", None])},
    instance={"elastic_ip": st.sampled_from([True, False, "yes"])}, vpc={}, vpc_optional={
        "internet_gateway": st.sampled_from([True, False, None, "gw", {}, {"name": "gw"}, {"name": "G"}, {"x": 1}]),
        "route_tables": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "main", "B"])},
                                                       optional={"routes": ROUTES}), max_size=3),
    })


@settings(max_examples=300, deadline=None)
@given(ANY_YAML | WELL_SHAPED | POLICY_SHAPED | INTERNET_SHAPED)
def test_any_input_either_parses_or_raises_topology_error(data):
    try:
        parse_topology(data)
    except TopologyError as e:
        assert str(e)


# --- NAT gateways, target groups, load balancers --------------------------------------------------------


def hyperplane() -> dict:
    """internet() with a NAT gateway routed to, a target group and a load balancer."""
    data = internet()
    vpc = data["vpcs"][0]
    vpc["route_tables"].append({"name": "private", "routes": [{"destination": "0.0.0.0/0",
                                                               "target": "nat_gateway/nat"}]})
    vpc["subnets"][1]["route_table"] = "private"
    vpc["nat_gateways"] = [{"name": "nat", "subnet": "app"}]
    vpc["target_groups"] = [{"name": "web", "protocol": "tcp", "port": 80,
                             "targets": ["instance/web", {"instance": "client", "port": 8080}, {"ip": "10.0.1.50"}],
                             "health_check": {"protocol": "http", "path": "/", "interval": 1, "healthy_threshold": 2,
                                              "unhealthy_threshold": 2, "timeout": 1}}]
    vpc["load_balancers"] = [{"name": "lb", "subnets": ["app"], "private_ip": "10.0.1.100",
                              "listeners": [{"protocol": "tcp", "port": 80, "target_group": "web"}]}]
    return data


def test_the_hyperplane_example():
    t = load_topology(CONFIGS / "hyperplane.yaml")
    assert [h.name for h in t.hosts] == ["host-a", "host-b", "host-c"]
    (vpc,) = t.vpcs
    assert vpc.internet_gateway == InternetGateway("demo-igw")
    assert vpc.route_tables == (RouteTable("public", (Route("0.0.0.0/0", "internet_gateway"),)),
                                RouteTable("private", (Route("0.0.0.0/0", "nat_gateway/nat"),)))
    assert vpc.subnet("public") == Subnet("public", ipaddress.IPv4Network("10.0.1.0/24"), route_table="public")
    assert vpc.subnet("private") == Subnet("private", ipaddress.IPv4Network("10.0.2.0/24"), route_table="private")
    assert vpc.nat_gateways == (NatGateway("nat", "public", "public"),)
    assert {i.name: (i.subnet, str(i.ip), i.host, i.security_groups) for i in vpc.instances} == {
        "web1": ("private", "10.0.2.11", "host-b", ("web",)), "web2": ("private", "10.0.2.12", "host-c", ("web",)),
        "web3": ("private", "10.0.2.13", "host-a", ("web",)), "client": ("private", "10.0.2.4", "host-a", ("default",)),
        "client2": ("private", "10.0.2.5", "host-b", ("default",))}
    assert vpc.security_group("web").ingress == (SecurityGroupRule("tcp", 80, 80, "10.0.0.0/16"),)
    assert vpc.target_groups == (TargetGroup(
        "web", "tcp", 80, (Target(80, "web1"), Target(80, "web2"), Target(80, "web3")),
        HealthCheck("http", None, "/", 1, 1, 2, 2, "200-399")),)
    assert vpc.load_balancers == (LoadBalancer("lb", ("public",), (Listener("tcp", 80, "web"),), IP("10.0.1.100")),)


def test_hyperplane_defaults():
    (vpc,) = parse_topology(demo()).vpcs
    assert (vpc.nat_gateways, vpc.target_groups, vpc.load_balancers) == ((), (), ())
    data = hyperplane()
    vpc = data["vpcs"][0]
    vpc["target_groups"] = [{"name": "web", "port": 80}]
    vpc["load_balancers"] = [{"name": "lb", "subnets": ["app"]}]
    (parsed,) = parse_topology(data).vpcs
    # The API's defaults: tcp, no targets, its health check; no listeners, the API's choice of address.
    assert parsed.target_group("web") == TargetGroup("web", "tcp", 80, (), HealthCheck())
    assert HealthCheck() == HealthCheck("tcp", None, "/", 30, None, 5, 2, "200-399")
    assert parsed.load_balancer("lb") == LoadBalancer("lb", ("app",), (), None)
    assert parsed.nat_gateway("nat") == NatGateway("nat", "app", "public", None)
    for lookup in (parsed.nat_gateway, parsed.target_group, parsed.load_balancer):
        with pytest.raises(KeyError):
            lookup("nope")


def test_every_hyperplane_key():
    data = hyperplane()
    vpc = data["vpcs"][0]
    vpc["subnets"].append({"name": "spare", "cidr": "10.0.3.0/24"})
    vpc["nat_gateways"] += [{"name": "inner", "subnet": "db", "connectivity": "private", "private_ip": "10.0.2.4"}]
    vpc["target_groups"].append({"name": "dns", "protocol": "udp", "port": 53, "targets": [
        {"ip": "10.0.2.53", "port": 5353}, {"instance": "web", "port": 53}, "instance/client"],
        "health_check": {"protocol": "tcp", "port": 8053, "interval": 0.5, "timeout": 2, "healthy_threshold": 3,
                         "unhealthy_threshold": 4, "matcher": "200"}})
    vpc["load_balancers"][0]["subnets"] = ["app", "spare"]
    vpc["load_balancers"][0]["listeners"].append({"protocol": "udp", "port": 53, "target_group": "dns"})
    vpc["load_balancers"].append({"name": "inner", "subnets": ["db"], "listeners": [
        {"port": 8080, "target_group": "web"}]})
    (parsed,) = parse_topology(data).vpcs  # client, without ip: the first address in db no NAT gateway took
    assert parsed.nat_gateways == (NatGateway("nat", "app"), NatGateway("inner", "db", "private", IP("10.0.2.4")))
    assert parsed.instances[1].ip == IP("10.0.2.5")
    assert parsed.route_table("private").routes == (Route("0.0.0.0/0", "nat_gateway/nat"),)
    assert parsed.target_groups == (
        TargetGroup("web", "tcp", 80, (Target(80, "web"), Target(8080, "client"), Target(80, ip=IP("10.0.1.50"))),
                    HealthCheck("http", None, "/", 1, 1, 2, 2)),
        TargetGroup("dns", "udp", 53, (Target(5353, ip=IP("10.0.2.53")), Target(53, "web"), Target(53, "client")),
                    HealthCheck("tcp", 8053, "/", 0.5, 2, 3, 4, "200")))
    assert parsed.load_balancers == (
        LoadBalancer("lb", ("app", "spare"), (Listener("tcp", 80, "web"), Listener("udp", 53, "dns")),
                     IP("10.0.1.100")),
        LoadBalancer("inner", ("db",), (Listener("tcp", 8080, "web"),)))


def test_routes_to_a_nat_gateway_may_name_a_subnets_cidr():
    data = hyperplane()
    data["vpcs"][0]["route_tables"][0]["routes"].append({"destination": "10.0.2.0/24", "target": "nat_gateway/nat"})
    assert Route("10.0.2.0/24", "nat_gateway/nat") in parse_topology(data).vpcs[0].route_table("public").routes


N, TG, LB = "vpcs[0].nat_gateways[0]", "vpcs[0].target_groups[0]", "vpcs[0].load_balancers[0]"
HYPERPLANE_ERRORS = {
    # shape (first pass)
    "unknown nat key": (_set("vpcs.0.nat_gateways.0.allocation_id", "x"),
                        [f"{N}: unknown key 'allocation_id' (allowed: name, subnet, connectivity, private_ip)"]),
    "nat name missing": (_delete("vpcs.0.nat_gateways.0.name"), [f"{N}.name: required"]),
    "nat name bad": (_set("vpcs.0.nat_gateways.0.name", "NAT"), [f"{N}.name: 'NAT' is not a valid name"]),
    "nat subnet missing": (_delete("vpcs.0.nat_gateways.0.subnet"), [f"{N}.subnet: required"]),
    "nat address not an address": (_set("vpcs.0.nat_gateways.0.private_ip", "10.0.1"),
                                   [f"{N}.private_ip: '10.0.1' is not an IPv4 address"]),
    "unknown target group key": (_set("vpcs.0.target_groups.0.vpc_id", "x"),
                                 [f"{TG}: unknown key 'vpc_id' (allowed: name, protocol, port, targets, health_check)"]),
    "target group port missing": (_delete("vpcs.0.target_groups.0.port"), [f"{TG}.port: required"]),
    "target group port a string": (_set("vpcs.0.target_groups.0.port", "80"), [f"{TG}.port: ", "'80'"]),
    "target a number": (_set("vpcs.0.target_groups.0.targets.0", 5),
                        [f"{TG}.targets[0]: expected instance/NAME or a mapping such as {{instance: web, port: 8080}} "
                         "or {ip: 10.0.1.50, port: 80}, got 5"]),
    "target a bare name": (_set("vpcs.0.target_groups.0.targets.0", "web"), [f"{TG}.targets[0]: expected instance/NAME"]),
    "target instance/": (_set("vpcs.0.target_groups.0.targets.0", "instance/"), [f"{TG}.targets[0]: expected"]),
    "target both": (_set("vpcs.0.target_groups.0.targets.0", {"instance": "web", "ip": "10.0.1.9"}),
                    [f"{TG}.targets[0]: a target names exactly one of instance or ip"]),
    "target neither": (_set("vpcs.0.target_groups.0.targets.0", {"port": 80}),
                       [f"{TG}.targets[0]: a target names exactly one of instance or ip"]),
    "unknown target key": (_set("vpcs.0.target_groups.0.targets.0", {"instance_id": "i-1"}),
                           [f"{TG}.targets[0]: unknown key 'instance_id' (allowed: instance, ip, port)"]),
    "target ip not an address": (_set("vpcs.0.target_groups.0.targets.2", {"ip": "web"}),
                                 [f"{TG}.targets[2].ip: 'web' is not an IPv4 address"]),
    "unknown health check key": (_set("vpcs.0.target_groups.0.health_check.retries", 3),
                                 [f"{TG}.health_check: unknown key 'retries'", "unhealthy_threshold"]),
    "health check protocol": (_set("vpcs.0.target_groups.0.health_check.protocol", "udp"),
                              [f"{TG}.health_check.protocol: Input should be 'tcp' or 'http', got 'udp'"]),
    "health check interval": (_set("vpcs.0.target_groups.0.health_check.interval", 0),
                              [f"{TG}.health_check.interval: ", "0.1", "got 0"]),
    "health check threshold": (_set("vpcs.0.target_groups.0.health_check.healthy_threshold", 1),
                               [f"{TG}.health_check.healthy_threshold: ", "got 1"]),
    "health check matcher": (_set("vpcs.0.target_groups.0.health_check.matcher", "2xx"),
                             [f"{TG}.health_check.matcher: "]),
    "unknown load balancer key": (_set("vpcs.0.load_balancers.0.subnet_ids", []),
                                  [f"{LB}: unknown key 'subnet_ids' (allowed: name, subnets, listeners, private_ip)"]),
    "load balancer subnets missing": (_delete("vpcs.0.load_balancers.0.subnets"), [f"{LB}.subnets: required"]),
    "load balancer subnets empty": (_set("vpcs.0.load_balancers.0.subnets", []), [f"{LB}.subnets: ", "at least 1"]),
    "unknown listener key": (_set("vpcs.0.load_balancers.0.listeners.0.target_group_id", "tg-1"),
                             [f"{LB}.listeners[0]: unknown key 'target_group_id' (allowed: protocol, port, target_group)"]),
    "listener target group missing": (_delete("vpcs.0.load_balancers.0.listeners.0.target_group"),
                                      [f"{LB}.listeners[0].target_group: required"]),
    # the file as a whole (second pass)
    "duplicate nat": (_append("vpcs.0.nat_gateways", {"name": "nat", "subnet": "db", "connectivity": "private"}),
                      ["vpcs[0].nat_gateways[1].name: duplicate NAT gateway name 'nat' (first used at "
                       f"{N}.name)"]),
    "nat in an unknown subnet": (_set("vpcs.0.nat_gateways.0.subnet", "pub"),
                                 [f"{N}.subnet: unknown subnet 'pub' in VPC 'demo' (subnets: app, db)"]),
    "nat connectivity": (_set("vpcs.0.nat_gateways.0.connectivity", "bridged"),
                         [f"{N}.connectivity: Input should be 'public' or 'private', got 'bridged'"]),
    "public nat without a gateway": (
        lambda d: _set("vpcs.0.internet_gateway", False)(d) or _set("vpcs.0.instances.0.elastic_ip", False)(d)
        or _set("vpcs.0.route_tables.0.routes", [])(d),
        [f"{N}.connectivity: a public NAT gateway needs the VPC's internet gateway (for its elastic IP), and "
         "VPC 'demo' has none"]),
    "nat address outside its subnet": (_set("vpcs.0.nat_gateways.0.private_ip", "10.0.2.9"),
                                       [f"{N}.private_ip: 10.0.2.9 is outside subnet 'app' (10.0.1.0/24)"]),
    "nat address reserved": (_set("vpcs.0.nat_gateways.0.private_ip", "10.0.1.3"),
                             [f"{N}.private_ip: 10.0.1.3 is one of the 5 reserved addresses"]),
    "nat address an instance's": (_set("vpcs.0.nat_gateways.0.private_ip", "10.0.1.10"),
                                  [f"{N}.private_ip: duplicate address 10.0.1.10 in this VPC (first used at "
                                   "vpcs[0].instances[0].ip)"]),
    "route to an unknown nat": (_set("vpcs.0.route_tables.1.routes.0.target", "nat_gateway/nope"),
                                ["vpcs[0].route_tables[1].routes[0].target: unknown NAT gateway 'nope' in VPC 'demo' "
                                 "(NAT gateways: nat)"]),
    "route to nat_gateway/": (_set("vpcs.0.route_tables.1.routes.0.target", "nat_gateway/"),
                              ["vpcs[0].route_tables[1].routes[0].target: 'nat_gateway/' is not internet_gateway, "
                               "egress_only_gateway, instance/NAME or nat_gateway/NAME"]),
    "duplicate target group": (_append("vpcs.0.target_groups", {"name": "web", "port": 81}),
                               [f"vpcs[0].target_groups[1].name: duplicate target group name 'web' (first used at "
                                f"{TG}.name)"]),
    "target group protocol": (_set("vpcs.0.target_groups.0.protocol", "http"),
                              [f"{TG}.protocol: Input should be 'tcp' or 'udp', got 'http'"]),
    "target group port out of range": (_set("vpcs.0.target_groups.0.port", 0), [f"{TG}.port: ", "got 0"]),
    "target port out of range": (_set("vpcs.0.target_groups.0.targets.1.port", 65536),
                                 [f"{TG}.targets[1].port: ", "got 65536"]),
    "target of an unknown instance": (_set("vpcs.0.target_groups.0.targets.0", "instance/nope"),
                                      [f"{TG}.targets[0].instance: unknown instance 'nope' in VPC 'demo' (instances: "
                                       "web, client)"]),
    "target outside the vpc": (_set("vpcs.0.target_groups.0.targets.2", {"ip": "192.168.1.5"}),
                               [f"{TG}.targets[2].ip: 192.168.1.5 is outside VPC 'demo' (10.0.0.0/16)"]),
    "duplicate target": (_append("vpcs.0.target_groups.0.targets", {"instance": "web", "port": 80}),
                         [f"{TG}.targets[3]: duplicate target 'instance/web port 80' (first used at {TG}.targets[0])"]),
    "too many targets (the API's limit)": (
        _set("vpcs.0.target_groups.0.targets", [{"ip": "10.0.3.1", "port": p} for p in range(1, 102)]),
        [f"{TG}.targets: List should have at most 100 items"]),
    "duplicate load balancer": (_append("vpcs.0.load_balancers", {"name": "lb", "subnets": ["db"]}),
                                ["vpcs[0].load_balancers[1].name: duplicate load balancer name 'lb' (first used at "
                                 f"{LB}.name)"]),
    "load balancer in an unknown subnet": (_set("vpcs.0.load_balancers.0.subnets", ["app", "nope"]),
                                           [f"{LB}.subnets[1]: unknown subnet 'nope' in VPC 'demo' (subnets: app, db)"]),
    "load balancer in a subnet twice": (_set("vpcs.0.load_balancers.0.subnets", ["app", "app"]),
                                        [f"{LB}.subnets[1]: duplicate subnet 'app' (first used at {LB}.subnets[0])"]),
    "load balancer in too many subnets (the API's limit)": (
        lambda d: d["vpcs"][0]["subnets"].extend({"name": f"s{n}", "cidr": f"10.0.{n}.0/24"} for n in range(3, 12))
        or _set("vpcs.0.load_balancers.0.subnets", ["app", "db", *(f"s{n}" for n in range(3, 12))])(d),
        [f"{LB}.subnets: List should have at most 10 items"]),
    "load balancer address outside its first subnet": (_set("vpcs.0.load_balancers.0.subnets", ["db", "app"]),
                                                       [f"{LB}.private_ip: 10.0.1.100 is outside subnet 'db' "
                                                        "(10.0.2.0/24)"]),
    "load balancer address reserved": (_set("vpcs.0.load_balancers.0.private_ip", "10.0.1.255"),
                                       [f"{LB}.private_ip: 10.0.1.255 is one of the 5 reserved addresses"]),
    "load balancer address an instance's": (_set("vpcs.0.load_balancers.0.private_ip", "10.0.1.10"),
                                            [f"{LB}.private_ip: duplicate address 10.0.1.10 in this VPC (first used "
                                             "at vpcs[0].instances[0].ip)"]),
    "listener of an unknown target group": (_set("vpcs.0.load_balancers.0.listeners.0.target_group", "nope"),
                                            [f"{LB}.listeners[0].target_group: unknown target group 'nope' in VPC "
                                             "'demo' (target groups: web)"]),
    "listener of another protocol": (_set("vpcs.0.load_balancers.0.listeners.0.protocol", "udp"),
                                     [f"{LB}.listeners[0].protocol: target group 'web' is tcp, the listener udp"]),
    "listener protocol": (_set("vpcs.0.load_balancers.0.listeners.0.protocol", "http"),
                          [f"{LB}.listeners[0].protocol: Input should be 'tcp' or 'udp', got 'http'"]),
    "listener port": (_set("vpcs.0.load_balancers.0.listeners.0.port", 70000), [f"{LB}.listeners[0].port: ", "70000"]),
    "duplicate listener": (_append("vpcs.0.load_balancers.0.listeners", {"port": 80, "target_group": "web"}),
                           [f"{LB}.listeners[1].port: duplicate listener 'tcp/80' (first used at "
                            f"{LB}.listeners[0].port)"]),
}


@pytest.mark.parametrize("change,expected", HYPERPLANE_ERRORS.values(), ids=HYPERPLANE_ERRORS.keys())
def test_invalid_hyperplane_keys_name_the_field_and_value(change, expected):
    data = hyperplane()
    change(data)
    assert_refused(data, expected)


def test_explicit_addresses_of_gateways_and_balancers_are_taken_before_instances_get_theirs():
    data = hyperplane()
    vpc = data["vpcs"][0]
    vpc["nat_gateways"][0]["private_ip"] = "10.0.1.4"
    vpc["load_balancers"][0]["private_ip"] = "10.0.1.5"
    vpc["instances"].append({"name": "extra", "subnet": "app", "host": "host-a"})
    assert parse_topology(data).instance("extra").ip == IP("10.0.1.6")


def test_every_hyperplane_problem_is_reported_with_its_path():
    data = hyperplane()
    vpc = data["vpcs"][0]
    vpc["nat_gateways"][0]["subnet"] = "nope"
    vpc["route_tables"][1]["routes"][0]["target"] = "nat_gateway/other"
    vpc["target_groups"][0]["targets"][0] = "instance/nope"
    vpc["target_groups"][0]["protocol"] = "sctp"
    vpc["load_balancers"][0]["private_ip"] = "10.0.1.10"
    vpc["load_balancers"][0]["listeners"][0]["target_group"] = "nope"
    lines = str(pytest.raises(TopologyError, parse_topology, data).value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{N}.subnet", f"{LB}.private_ip", "vpcs[0].route_tables[1].routes[0].target", f"{TG}.targets[0].instance",
        f"{TG}.protocol", f"{LB}.listeners[0].target_group"]


# NAT gateways, target groups and load balancers from a few plausible values each, valid or not.
HYPERPLANE_SHAPED = _shaped(instance={"ip": ADDRESSES}, vpc={
        "nat_gateways": st.lists(st.fixed_dictionaries({"name": NAMES, "subnet": NAMES}, optional={
            "connectivity": st.sampled_from(["public", "private", "x", 1]), "private_ip": ADDRESSES}), max_size=2),
        "target_groups": st.lists(st.fixed_dictionaries({"name": NAMES, "port": st.sampled_from([0, 80, "80", 70000])},
                                                        optional={
            "protocol": st.sampled_from(["tcp", "udp", "http"]),
            "targets": st.lists(st.one_of(
                st.sampled_from(["instance/a1", "instance/b2", "instance/", "a1", 5, None]),
                st.fixed_dictionaries({}, optional={"instance": st.sampled_from(["a1", "zz"]), "ip": ADDRESSES,
                                                    "port": st.sampled_from([1, 80, 0, "80"])})), max_size=4),
            "health_check": st.dictionaries(st.sampled_from(["protocol", "interval", "matcher", "x"]),
                                            st.sampled_from(["http", "tcp", 1, 0, "200", "2xx"]), max_size=3)}),
            max_size=2),
        "load_balancers": st.lists(st.fixed_dictionaries({"name": NAMES}, optional={
            "subnets": st.lists(NAMES, max_size=3), "private_ip": ADDRESSES,
            "listeners": st.lists(st.fixed_dictionaries({}, optional={
                "protocol": st.sampled_from(["tcp", "udp", "x"]), "port": st.sampled_from([80, 0, "80"]),
                "target_group": NAMES}), max_size=3)}), max_size=2),
    }, vpc_optional={
        "internet_gateway": st.booleans(),
        "route_tables": st.lists(st.fixed_dictionaries({"name": NAMES}, optional={"routes": st.lists(
            st.fixed_dictionaries({"destination": st.sampled_from(["0.0.0.0/0", "10.0.1.0/24"]),
                                   "target": st.sampled_from(["nat_gateway/a", "nat_gateway/zz", "nat_gateway/"])}),
            max_size=2)}), max_size=2),
    })


@settings(max_examples=200, deadline=None)
@given(HYPERPLANE_SHAPED)
def test_any_hyperplane_input_either_parses_or_raises_topology_error(data):
    try:
        parse_topology(data)
    except TopologyError as e:
        assert str(e)


# --- IPv6, egress-only gateways, DHCP options and private DNS ------------------------------------------------
from vswitch.topology import (ALLOW_ALL_EGRESS_DUAL, DhcpOptions, DnsRecord, DnsZone,  # noqa: E402
                              EgressOnlyGateway)

IP6 = ipaddress.IPv6Address
NET6 = ipaddress.IPv6Network


def dual() -> dict:
    """A dual-stack VPC with its /56 given: subnets by position, by index and by /64, one without; instances
    with whole addresses, interface parts and none; an egress-only gateway; DHCP options; two zones."""
    return {
        "hosts": [{"name": "host-a"}],
        "vpcs": [{
            "name": "six",
            "cidr": "10.0.0.0/16",
            "ipv6_cidr": "2001:db8:ab00::/56",
            "egress_only_gateway": True,
            "dhcp_options": {"domain_name": "corp.example", "domain_name_servers": ["AmazonProvidedDNS", "192.0.2.53"],
                             "ntp_servers": ["169.254.169.123"]},
            "dns_zones": [
                {"name": "corp.internal", "records": [
                    {"name": "web.corp.internal", "type": "A", "values": "10.0.1.10"},
                    {"name": "WEB.corp.internal.", "type": "AAAA", "ttl": 60, "values": ["2001:DB8:AB00::10"]}]},
                {"name": "1.0.10.in-addr.arpa", "records": [
                    {"name": "10.1.0.10.in-addr.arpa", "type": "PTR", "values": ["web.corp.internal"]}]}],
            "route_tables": [{"name": "main", "routes": [
                {"destination": "::/0", "target": "egress_only_gateway"},
                {"destination": "2001:db8:ab00:7::/64", "target": "instance/db"}]}],
            "subnets": [{"name": "app", "cidr": "10.0.1.0/24", "ipv6": True},
                        {"name": "ops", "cidr": "10.0.2.0/24", "ipv6_cidr": "2001:db8:ab00:7::/64"},
                        {"name": "lab", "cidr": "10.0.3.0/24", "ipv6": True, "ipv6_index": 255},
                        {"name": "legacy", "cidr": "10.0.4.0/24"}],
            "instances": [
                {"name": "web", "subnet": "app", "host": "host-a", "ipv6": "::10", "interface": "tap"},
                {"name": "db", "subnet": "ops", "host": "host-a", "ipv6": "2001:db8:ab00:7::20"},
                {"name": "auto", "subnet": "lab", "host": "host-a"},
                {"name": "old", "subnet": "legacy", "host": "host-a", "interface": "tun"},
            ],
            "security_groups": [{"name": "web"}, {"name": "closed", "egress": []}],
        }],
    }


def test_every_dual_stack_key():
    (vpc,) = parse_topology(dual()).vpcs
    assert (vpc.ipv6, vpc.ipv6_cidr) == (True, NET6("2001:db8:ab00::/56"))
    assert [(s.name, s.ipv6_index, s.ipv6_cidr) for s in vpc.subnets] == [
        ("app", 0, NET6("2001:db8:ab00::/64")), ("ops", 7, NET6("2001:db8:ab00:7::/64")),
        ("lab", 255, NET6("2001:db8:ab00:ff::/64")), ("legacy", None, None)]
    assert [(i.name, i.interface, i.ipv6) for i in vpc.instances] == [
        ("web", "tap", IP6("2001:db8:ab00::10")), ("db", "tun", IP6("2001:db8:ab00:7::20")),
        ("auto", "tun", None), ("old", "tun", None)]
    assert vpc.instances[0].ipv6_address(NET6("2001:db8:ab00::/64")) == IP6("2001:db8:ab00::10")
    assert vpc.egress_only_gateway == EgressOnlyGateway("six-eigw")
    assert vpc.route_table("main").routes == (Route("::/0", "egress_only_gateway"),
                                              Route("2001:db8:ab00:7::/64", "instance/db"))
    assert vpc.dhcp_options == DhcpOptions("corp.example", ("AmazonProvidedDNS", "192.0.2.53"), ("169.254.169.123",))
    assert vpc.dns_zones == (
        DnsZone("corp.internal", (DnsRecord("web.corp.internal", "A", ("10.0.1.10",)),
                                  DnsRecord("WEB.corp.internal.", "AAAA", ("2001:db8:ab00::10",), 60))),
        DnsZone("1.0.10.in-addr.arpa", (DnsRecord("10.1.0.10.in-addr.arpa", "PTR", ("web.corp.internal",)),)))
    # A group without egress in a dual-stack VPC: all out, both families (the API's default there).
    assert vpc.security_group("web").egress == ALLOW_ALL_EGRESS_DUAL
    assert vpc.security_group("closed").egress == ()


def test_an_amazon_provided_block_leaves_subnets_by_index_and_addresses_by_interface_part():
    data = dual()
    vpc = data["vpcs"][0]
    del vpc["ipv6_cidr"]
    vpc["ipv6"] = True
    vpc["subnets"][1] = {"name": "ops", "cidr": "10.0.2.0/24", "ipv6": True, "ipv6_index": 7}
    vpc["instances"][1]["ipv6"] = "::20"
    vpc["route_tables"][0]["routes"].pop()  # a /64 of a block not known yet
    (six,) = parse_topology(data).vpcs
    assert (six.ipv6, six.ipv6_cidr) == (True, None)
    assert [(s.name, s.ipv6_index, s.ipv6_cidr) for s in six.subnets] == [
        ("app", 0, None), ("ops", 7, None), ("lab", 255, None), ("legacy", None, None)]
    web, db = six.instances[:2]
    assert (web.ipv6, db.ipv6) == (IP6("::10"), IP6("::20"))  # interface parts: placed when the /56 is known
    block = NET6("2001:db8:100::/56")
    assert six.subnet("ops").ipv6_block(block) == NET6("2001:db8:100:7::/64")
    assert db.ipv6_address(six.subnet("ops").ipv6_block(block)) == IP6("2001:db8:100:7::20")
    assert six.subnet("legacy").ipv6_block(block) is None


def test_dual_stack_defaults():
    (vpc,) = parse_topology(demo()).vpcs
    assert (vpc.ipv6, vpc.ipv6_cidr, vpc.egress_only_gateway, vpc.dhcp_options, vpc.dns_zones) == (
        False, None, None, None, ())
    assert all((s.ipv6_index, s.ipv6_cidr) == (None, None) for s in vpc.subnets)
    assert all((i.interface, i.ipv6) == ("tun", None) for i in vpc.instances)
    data = demo()
    data["vpcs"][0].update(egress_only_gateway={"name": "out"}, dhcp_options={}, ipv6=True)
    data["vpcs"][0]["subnets"][0]["ipv6"] = True
    data["vpcs"][0]["dns_zones"] = [{"name": "x.internal"}]
    data["vpcs"][0]["security_groups"] = [{"name": "web"}]
    (vpc,) = parse_topology(data).vpcs
    assert vpc.egress_only_gateway == EgressOnlyGateway("out")
    assert vpc.dhcp_options == DhcpOptions(None, ("AmazonProvidedDNS",), ())
    assert vpc.dns_zones == (DnsZone("x.internal", ()),)
    assert vpc.subnet("app").ipv6_index == 0 and vpc.security_group("web").egress == ALLOW_ALL_EGRESS_DUAL
    assert vpc.egress_only_gateway is not None and parse_topology(
        {**data, "vpcs": [{**data["vpcs"][0], "egress_only_gateway": False}]}).vpcs[0].egress_only_gateway is None


V6, S6, I6, Z6 = "vpcs[0]", "vpcs[0].subnets", "vpcs[0].instances", "vpcs[0].dns_zones"
DUAL_ERRORS = {
    "both vpc blocks": (_set("vpcs.0.ipv6", True), [f"{V6}.ipv6_cidr: give ipv6: true", "not both"]),
    "vpc block /48": (_set("vpcs.0.ipv6_cidr", "2001:db8:ab00::/48"), [f"{V6}.ipv6_cidr: ", "/56, not /48"]),
    "vpc block host bits": (_set("vpcs.0.ipv6_cidr", "2001:db8:ab00::1/56"), [f"{V6}.ipv6_cidr: ", "host bits"]),
    "vpc block ipv4": (_set("vpcs.0.ipv6_cidr", "10.0.0.0/16"), [f"{V6}.ipv6_cidr: ", "not an IPv6 CIDR"]),
    "vpc ipv6 not a bool": (_set("vpcs.0.ipv6", "yes"), [f"{V6}.ipv6: ", "'yes'"]),
    "subnet without a vpc block": (lambda d: d["vpcs"][0].pop("ipv6_cidr"),
                                   [f"{S6}[0].ipv6: VPC 'six' has no IPv6 block", f"{S6}[1].ipv6_cidr: VPC 'six'",
                                    f"{I6}[0].ipv6: subnet 'app' has no IPv6 block"]),
    "subnet /64 outside": (_set("vpcs.0.subnets.1.ipv6_cidr", "2001:db8:ab01:7::/64"),
                           [f"{S6}[1].ipv6_cidr: 2001:db8:ab01:7::/64 is outside VPC 'six'"]),
    "subnet /64 of an amazon block": (lambda d: d["vpcs"][0].update(ipv6=True, ipv6_cidr=None),
                                      [f"{S6}[1].ipv6_cidr: VPC 'six''s /56 is amazon-provided"]),
    "subnet /56": (_set("vpcs.0.subnets.1.ipv6_cidr", "2001:db8:ab00::/56"), [f"{S6}[1].ipv6_cidr: ", "/64, not /56"]),
    "subnet both ways": (_set("vpcs.0.subnets.1.ipv6", True), [f"{S6}[1].ipv6_cidr: give ipv6: true", "not both"]),
    "subnet index without ipv6": (_set("vpcs.0.subnets.3.ipv6_index", 3), [f"{S6}[3].ipv6_index: ", "ipv6: true"]),
    "subnet index 256": (_set("vpcs.0.subnets.2.ipv6_index", 256), [f"{S6}[2].ipv6_index: ", "255"]),
    "subnet /64 twice": (_set("vpcs.0.subnets.2.ipv6_index", 7),
                         [f"{S6}[2].ipv6: duplicate IPv6 /64 number 7 (first used at {S6}[1].ipv6_cidr)"]),
    "instance address outside": (_set("vpcs.0.instances.1.ipv6", "2001:db8:ab00:8::20"),
                                 [f"{I6}[1].ipv6: 2001:db8:ab00:8::20 is outside subnet 'ops'"]),
    "instance address reserved": (_set("vpcs.0.instances.0.ipv6", "::3"),
                                  [f"{I6}[0].ipv6: ::3 is one of the 5 reserved"]),
    "instance address last": (_set("vpcs.0.instances.1.ipv6", "2001:db8:ab00:7:ffff:ffff:ffff:ffff"),
                              [f"{I6}[1].ipv6: ", "reserved"]),
    "instance address twice": (_append("vpcs.0.instances", {"name": "dup", "subnet": "ops", "host": "host-a",
                                                            "ipv6": "::20"}),
                               [f"{I6}[4].ipv6: duplicate IPv6 address ::20 in subnet 'ops' "
                                f"(first used at {I6}[1].ipv6)"]),
    "instance address in a v4 subnet": (_set("vpcs.0.instances.3.ipv6", "::10"),
                                        [f"{I6}[3].ipv6: subnet 'legacy' has no IPv6 block"]),
    "instance address not ipv6": (_set("vpcs.0.instances.0.ipv6", "10.0.1.10"), [f"{I6}[0].ipv6: ", "not an IPv6"]),
    "instance interface": (_set("vpcs.0.instances.0.interface", "vm"), [f"{I6}[0].interface: ", "'tun' or 'tap'"]),
    "eigw not a bool": (_set("vpcs.0.egress_only_gateway", "yes"), [f"{V6}.egress_only_gateway: ", "'yes'"]),
    "eigw bad name": (_set("vpcs.0.egress_only_gateway", {"name": "Out"}), [f"{V6}.egress_only_gateway.name: "]),
    "route to an absent eigw": (_set("vpcs.0.egress_only_gateway", False),
                                ["vpcs[0].route_tables[0].routes[0].target: egress_only_gateway", "has none"]),
    "route to eigw for ipv4": (_append("vpcs.0.route_tables.0.routes", {"destination": "0.0.0.0/0",
                                                                        "target": "egress_only_gateway"}),
                               ["vpcs[0].route_tables[0].routes[2].destination: an egress-only internet gateway "
                                "takes IPv6 destinations, not 0.0.0.0/0"]),
    "route for the /56": (_set("vpcs.0.route_tables.0.routes.1.destination", "2001:db8:ab00::/56"),
                          ["vpcs[0].route_tables[0].routes[1].destination: 2001:db8:ab00::/56 is the VPC's "
                           "IPv6 block"]),
    "route inside the /56": (_set("vpcs.0.route_tables.0.routes.1.destination", "2001:db8:ab00:9::/64"),
                             ["vpcs[0].route_tables[0].routes[1].destination: ", "more specific than the IPv6 local"]),
    "dhcp unknown key": (_set("vpcs.0.dhcp_options.ntp", []), [f"{V6}.dhcp_options: unknown key 'ntp'"]),
    "dhcp bad server": (_set("vpcs.0.dhcp_options.domain_name_servers", ["ns.example"]),
                        [f"{V6}.dhcp_options.domain_name_servers[0]: ", "not an IPv4 address"]),
    "dhcp bad domain": (_set("vpcs.0.dhcp_options.domain_name", "corp_example"), [f"{V6}.dhcp_options.domain_name: "]),
    "dhcp too many ntp": (_set("vpcs.0.dhcp_options.ntp_servers", ["192.0.2.1"] * 5),
                          [f"{V6}.dhcp_options.ntp_servers: "]),
    "zone record outside": (_set("vpcs.0.dns_zones.0.records.0.name", "web.other.internal"),
                            [f"{Z6}[0].records[0].name: web.other.internal is neither the zone's apex"]),
    "zone record value": (_set("vpcs.0.dns_zones.0.records.1.values", ["10.0.1.10"]),
                          [f"{Z6}[0].records[1].values: ", "not an IPv6 address"]),
    "zone record type": (_set("vpcs.0.dns_zones.0.records.0.type", "MX"), [f"{Z6}[0].records[0].type: "]),
    "zone record set twice": (_append("vpcs.0.dns_zones.0.records", {"name": "Web.Corp.Internal", "type": "A",
                                                                     "values": ["10.0.1.11"]}),
                              [f"{Z6}[0].records[2].name: a second A record set"]),
    "zone name twice": (_append("vpcs.0.dns_zones", {"name": "CORP.internal."}),
                        [f"{Z6}[2].name: duplicate zone name 'corp.internal' (first used at {Z6}[0].name)"]),
    "zone bad name": (_set("vpcs.0.dns_zones.1.name", "bad_name"), [f"{Z6}[1].name: "]),
    "zone unknown key": (_set("vpcs.0.dns_zones.1.vpcs", ["six"]), [f"{Z6}[1]: unknown key 'vpcs'"]),
    "record unknown key": (_set("vpcs.0.dns_zones.1.records.0.class", "IN"),
                           [f"{Z6}[1].records[0]: unknown key 'class'", "allowed: name, type, ttl, values"]),
}


@pytest.mark.parametrize("change,expected", DUAL_ERRORS.values(), ids=DUAL_ERRORS.keys())
def test_invalid_dual_stack_keys_name_the_field_and_value(change, expected):
    data = dual()
    change(data)
    assert_refused(data, expected)


def test_an_amazon_blocks_subnet_addresses_are_interface_parts():
    data = dual()
    vpc = data["vpcs"][0]
    vpc.update(ipv6=True)
    del vpc["ipv6_cidr"]
    vpc["subnets"][1] = {"name": "ops", "cidr": "10.0.2.0/24", "ipv6": True}
    vpc["route_tables"][0]["routes"].pop()
    assert_refused(data, [f"{I6}[1].ipv6: the /64 of subnet 'ops' is known only once `vpc apply` makes its VPC "
                          "(ipv6: true): give the interface part, such as ::20"])
    vpc["instances"][1]["ipv6"] = "::20"
    assert parse_topology(data).instance("db").ipv6 == IP6("::20")


def test_every_dual_stack_problem_is_reported_with_its_path():
    data = dual()
    vpc = data["vpcs"][0]
    vpc["subnets"][2]["ipv6_index"] = 7
    vpc["instances"][0]["ipv6"] = "::1"
    vpc["route_tables"][0]["routes"][0]["destination"] = "0.0.0.0/0"
    vpc["dhcp_options"]["ntp_servers"] = ["x"]
    vpc["dns_zones"][0]["records"][0]["name"] = "web.example"
    lines = str(pytest.raises(TopologyError, parse_topology, data).value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{S6}[2].ipv6", f"{I6}[0].ipv6", "vpcs[0].route_tables[0].routes[0].destination",
        f"{V6}.dhcp_options.ntp_servers[0]", f"{Z6}[0].records[0].name"]


DUAL_SHAPED = _shaped(
    subnet={"ipv6": st.sampled_from([True, False, "x"]), "ipv6_index": st.sampled_from([0, 1, 255, 256, -1]),
            "ipv6_cidr": st.sampled_from(["2001:db8:ab00:1::/64", "2001:db8:ab01::/64", "x", "::/0"])},
    instance={"ipv6": st.sampled_from(["::10", "::1", "2001:db8:ab00:1::9", "2001:db8:ab00::9", "x", 5]),
              "interface": st.sampled_from(["tun", "tap", "x"])}, vpc={}, vpc_optional={
        "ipv6": st.sampled_from([True, False, 1]),
        "ipv6_cidr": st.sampled_from(["2001:db8:ab00::/56", "2001:db8:ab00::/64", "x"]),
        "egress_only_gateway": st.sampled_from([True, False, {"name": "o"}, {"x": 1}, "y"]),
        "dhcp_options": st.sampled_from([{}, {"domain_name": "a.b"}, {"domain_name_servers": ["x"]}, None, 3]),
        "dns_zones": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a.b", "A.B.", "b", "_"])}, optional={
            "records": st.lists(st.fixed_dictionaries({
                "name": st.sampled_from(["a.b", "x.a.b", "c", "b"]), "type": st.sampled_from(["A", "CNAME", "X"]),
                "values": st.sampled_from([["10.0.0.1"], "a.b", [], ["::1"], 4])}), max_size=3)}), max_size=2),
        "route_tables": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "main"])}, optional={
            "routes": st.lists(st.fixed_dictionaries({
                "destination": st.sampled_from(["::/0", "0.0.0.0/0", "2001:db8:ab00::/56", "2001:db8:ab00:1::/64"]),
                "target": st.sampled_from(["egress_only_gateway", "instance/a1"])}), max_size=2)}), max_size=2),
    })


@settings(max_examples=300, deadline=None)
@given(DUAL_SHAPED)
def test_any_dual_stack_input_either_parses_or_raises_topology_error(data):
    try:
        parse_topology(data)
    except TopologyError as e:
        assert str(e)
        assert all(re.match(TOP_OR_PATH, line) for line in str(e).splitlines()), str(e)
