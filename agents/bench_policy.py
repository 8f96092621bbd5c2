"""The policy figures of ``scripts/bench`` (security groups, conntrack):

    tcp_rules      single-stream TCP throughput of an established flow into ``web`` whose only security
                   group has 1 rule, then 1,000 rules (999 that never match, the allowing one last),
                   interleaved run by run. Rules are read for a flow's first packet only, so the two
                   should differ by no more than the noise between runs of either.
    new_flows      first packets admitted per second by the policy path itself (``Firewall.admit`` on
                   distinct TCP SYNs into an ENI: conntrack miss, security group evaluation, network
                   ACL, conntrack entry created), in-process, with 1 and with 1,000 rules.
    memory         resident memory of one ENI's flow table holding 1,000,000 established TCP flows,
                   measured in a fresh process (``conntrack.flow_table_rss``). Goal: ≤ 1 GiB.
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import subprocess
import sys
import time

from vswitch.eni import Eni, VpcView, reserved_keys
from vswitch.firewall import Firewall
from vswitch.headers import TCP, ipv4_packet
from vswitch.host_policy import HostPolicy
from vswitch.mapping import MappingCache

MEMORY_FLOWS = 1_000_000
MEMORY_GOAL = 1 << 30
NEW_FLOWS = 50_000


def rules(n: int, allow_cidr: str, port: int) -> list[dict]:
    """``n`` ingress rules: ``n - 1`` that never match the benchmark's flow (other ports and sources,
    in many prefix lengths, as real policies have), and the one that allows it, last."""
    out = []
    for i in range(n - 1):
        out.append({"protocol": "tcp", "from_port": 10000 + i % 5000, "to_port": 10000 + i % 5000,
                    "cidr": f"172.{16 + i % 16}.{i // 16 % 256}.0/{24 + i % 9}", "source_group_id": None,
                    "description": None})
    out.append({"protocol": "tcp", "from_port": port, "to_port": port, "cidr": allow_cidr,
                "source_group_id": None, "description": None})
    return out


def new_flows_per_second(n_rules: int, flows: int = NEW_FLOWS) -> float:
    """First packets admitted per second through one ENI's firewall (from another subnet, so the network
    ACL is asked too), the host agent's code without its I/O."""
    cache = MappingCache()
    vpc = VpcView(1, ipaddress.IPv4Network("10.0.0.0/16"), reserved_keys(["10.0.1.0/24"]), cache.table(1))
    eni = Eni("eni-0000000000000001", 1, ipaddress.IPv4Interface("10.0.1.10/24"), "web", "ns", True, vpc)
    acl = [{"rule_number": 100, "egress": e, "protocol": "-1", "action": "allow", "cidr": "0.0.0.0/0",
            "from_port": -1, "to_port": -1} for e in (False, True)]
    view = {"enis": [{"id": eni.id, "private_ip": "10.0.1.10", "subnet_id": "subnet-1",
                      "security_group_ids": ["sg-bench"],
                      "connection_tracking": {"max_tracked_flows": flows + 1}}],
            "security_groups": [{"id": "sg-bench", "ingress": rules(n_rules, "10.0.0.0/16", 5201), "egress": []}],
            "network_acls": [{"id": "acl-1", "entries": acl}],
            "subnets": [{"id": "subnet-1", "cidr_block": "10.0.1.0/24", "network_acl_id": "acl-1"}]}
    HostPolicy().apply(view, {eni.id: eni})
    packets = [bytearray(ipv4_packet(f"10.0.{2 + i // 50000}.{4 + i % 200}", "10.0.1.10",
                                     TCP(1024 + i // 200 % 60000, 5201, seq=i,
                                         flags=TCP.SYN, window=64240)))
               for i in range(flows)]
    fw = Firewall()
    t0 = time.perf_counter()
    for i, p in enumerate(packets):
        if fw.admit(eni, p, 0, len(p), False, 1.0 + i * 1e-6) is not None:
            raise RuntimeError(f"the benchmark's flow {i} was refused")
    elapsed = time.perf_counter() - t0
    if len(eni.ct) != flows:
        raise RuntimeError(f"{len(eni.ct)} flows tracked, expected {flows}")
    return flows / elapsed


def memory(flows: int = MEMORY_FLOWS) -> dict:
    code = f"from vswitch.conntrack import flow_table_rss; print(flow_table_rss({flows}))"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    used = int(out.stdout.strip())
    return {"flows": flows, "rss_bytes": used, "bytes_per_flow": used / flows, "goal_bytes": MEMORY_GOAL,
            "verdict": "PASS" if used <= MEMORY_GOAL else "FAIL", "seconds": time.monotonic() - t0}


def tcp_with_rules(lab, measure_tcp, path, servers, runs: int, seconds: int, log) -> dict:
    """Interleaved TCP runs into ``web`` with a 1-rule and a 1,000-rule group (restored afterwards)."""
    api = lab.api()
    web = next(i for i in api.call("GET", "/v1/instances") if i["name"] == "web")
    client_ip = next(i for i in api.call("GET", "/v1/instances") if i["name"] == "client")["private_ip"]
    groups = {}
    for n in (1, 1000):
        groups[n] = api.call("POST", "/v1/security-groups", {
            "vpc_id": web["vpc_id"], "name": f"bench-{n}-rules",
            "ingress": [{k: v for k, v in r.items() if v is not None}
                        for r in rules(n, f"{client_ip}/32", 5201)]})["id"]
    values: dict[int, list[float]] = {1: [], 1000: []}
    try:
        for i in range(runs):
            for n in ((1, 1000) if i % 2 == 0 else (1000, 1)):
                api.call("PATCH", f"/v1/instances/{web['id']}", {"security_group_ids": [groups[n]]})
                time.sleep(1.0)  # the change reaches the agent in ~0.1 s; then settle
                bps, _ = measure_tcp(path, servers, seconds)
                values[n].append(bps)
                log(f"bench: run {i + 1}/{runs} tcp with {n:>4} rule(s) {bps / 1e9:.2f} Gbit/s")
    finally:
        api.call("PATCH", f"/v1/instances/{web['id']}", {"security_group_ids": web["security_group_ids"]})
        time.sleep(0.5)
        for gid in groups.values():
            api.call("DELETE", f"/v1/security-groups/{gid}")
    m1, m1000 = statistics.median(values[1]), statistics.median(values[1000])
    spread = max(max(v) - min(v) for v in values.values()) if runs > 1 else None
    return {"rules_1_bps": m1, "rules_1000_bps": m1000, "ratio": m1000 / m1, "raw": values,
            "largest_spread_between_runs_bps": spread,
            "within_noise": None if spread is None else abs(m1 - m1000) <= spread}


def report_lines(policy: dict) -> list[str]:
    lines = ["", "policy (security groups, conntrack):"]
    t = policy.get("tcp_rules")
    if t:
        noise = "n/a (one run)" if t["within_noise"] is None else ("yes" if t["within_noise"] else "NO")
        lines.append(f"  TCP established flow, 1 rule      {t['rules_1_bps'] / 1e9:6.2f} Gbit/s")
        lines.append(f"  TCP established flow, 1,000 rules {t['rules_1000_bps'] / 1e9:6.2f} Gbit/s  "
                     f"ratio {t['ratio']:.1%}; difference within run-to-run spread: {noise}")
    f = policy.get("new_flows")
    if f:
        lines.append(f"  new flows admitted/s (policy path, in-process): 1 rule {f['1']:,.0f}; "
                     f"1,000 rules {f['1000']:,.0f}")
    m = policy.get("memory")
    if m:
        lines.append(f"  memory, {m['flows']:,} tracked TCP flows: {m['rss_bytes'] / 2**20:,.0f} MiB "
                     f"({m['bytes_per_flow']:.0f} B/flow; goal <= 1 GiB: {m['verdict']})")
    for e in policy.get("errors", []):
        lines.append(f"  ERROR: {e}")
    return lines


if __name__ == "__main__":  # the in-process figures alone: python -m agents.bench_policy
    print(json.dumps({"new_flows": {str(n): new_flows_per_second(n) for n in (1, 1000)}, "memory": memory()},
                     indent=2))
