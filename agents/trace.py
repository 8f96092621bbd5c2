"""``vpc trace``: follow one packet through the data path, decision by decision.

The packet (a TCP SYN, a UDP datagram or an ICMP echo request from the source instance's address) is
built here and handed to the agents that would carry it, which run their real egress and ingress code
on it as a dry run (``EgressPath.process`` / ``IngressPath.process`` with a ``trace`` list): the same
source/destination check, route, security group and network ACL evaluation, conntrack lookup and
mapping lookup as live traffic — with nothing counted, tracked or logged.

    source host agent:  trace      → steps, and either a local delivery or (underlay host, datagram)
    edge agent:         trace      → when the datagram goes to the edge: its relay checks and, for the
                                     internet, the gateway's translation (or why not); or the host it relays to
    destination agent:  trace_in   → the steps of that datagram arriving from the underlay
"""

from __future__ import annotations

import base64
import ipaddress
import random

from vswitch import control
from vswitch.headers import ICMP, TCP, UDP, ipv4_packet, ipv6_packet

PROTOCOLS = ("tcp", "udp", "icmp")  # icmp over IPv6 is an ICMPv6 echo request


def datagram_request(request: dict) -> tuple[bytearray, str]:
    """The Geneve datagram (base64) and the outer source address a ``trace`` or ``trace_in`` request
    hands an agent; ValueError says what is missing or malformed."""
    try:
        return bytearray(base64.b64decode(request["datagram"], validate=True)), str(request["outer_ip"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"needs datagram (base64) and outer_ip: {e}") from None


def build_packet(src: str, dst: str, protocol: str, port: int | None, sport: int | None = None) -> bytes:
    """The first packet of a flow: a TCP SYN, a UDP datagram, an ICMP echo request (IPv4 or IPv6, as the
    addresses are)."""
    sport = sport or random.randint(32768, 60999)  # Linux's ephemeral range
    v6 = ipaddress.ip_address(src).version == 6
    packet = ipv6_packet if v6 else ipv4_packet
    if protocol == "tcp":
        return packet(src, dst, TCP(sport, port or 80, seq=random.getrandbits(32), flags=TCP.SYN, window=64240))
    if protocol == "udp":
        return packet(src, dst, UDP(sport, port or 53, b"trace"))
    if protocol == "icmp":
        return packet(src, dst, ICMP(128 if v6 else 8, 0, bytes([0x7E, 0x57, 0, 1]) + b"trace"))
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")


def trace(state: dict, instances: dict, source: str, destination: str, protocol: str = "tcp",
          port: int | None = None, sport: int | None = None, ipv6: bool = False) -> dict:
    """``state``: the lab state (components and their control sockets); ``instances``: name → {ip, ipv6,
    host, ...}. ``destination``: an instance name or an address (an IPv6 one traces IPv6; ``ipv6`` makes
    an instance name mean its IPv6 address). Returns {packet, steps, verdict}."""
    if source not in instances:
        raise ValueError(f"no instance {source!r}; there are: {', '.join(sorted(instances))}")
    if destination in instances:
        dst = instances[destination]["ipv6" if ipv6 else "ip"]
        if not dst:
            raise ValueError(f"instance {destination!r} has no IPv6 address")
    else:
        dst = str(ipaddress.ip_address(destination))
    v6 = ipaddress.ip_address(dst).version == 6
    src_inst = dict(instances[source])
    if v6:
        if not src_inst.get("ipv6"):
            raise ValueError(f"instance {source!r} has no IPv6 address")
        src_inst["ip"] = src_inst["ipv6"]
    hosts = {c["underlay_ip"]: (name, c) for name, c in state["components"].items() if c["role"] == "host_agent"}
    by_name = {name: c for _, (name, c) in hosts.items()}
    packet = build_packet(src_inst["ip"], dst, protocol, port, sport)
    first = by_name[src_inst["host"]]
    out = control.request(first["socket"], {"op": "trace", "instance": source,
                                            "packet": base64.b64encode(packet).decode()}, timeout=5)
    if "error" in out:
        raise RuntimeError(out["error"])
    steps = [{"host": src_inst["host"], **s} for s in out["steps"]]
    delivered = out.get("delivered", False)
    nodes = {c["underlay_ip"]: name for name, c in state["components"].items() if c["role"] == "hyperplane_agent"}
    if "underlay" in out and out["underlay"] in nodes:  # a NAT gateway or load balancer: flow state, not traced
        steps.append({"host": nodes[out["underlay"]], "step": "hyperplane node", "result": "allow",
                      "detail": "the node translates with its flow state; the path beyond it is not traced"})
        delivered = True
        out = {}
    if "underlay" in out and out["underlay"] not in hosts:  # the edge: the internet, or a mapping miss
        edge = next((c for c in state["components"].values()
                     if c["role"] == "edge_agent" and c["underlay_ip"] == out["underlay"]), None)
        if edge is None:
            raise RuntimeError(f"the packet goes to {out['underlay']}, which is no component of this lab")
        relayed = control.request(edge["socket"], {"op": "trace", "datagram": out["datagram"],
                                                   "outer_ip": out["outer_ip"]}, timeout=5)
        if "error" in relayed:
            raise RuntimeError(relayed["error"])
        steps += [{"host": "edge", **s} for s in relayed["steps"]]
        delivered = relayed.get("delivered", False)
        out = relayed
    if "underlay" in out:
        peer = hosts.get(out["underlay"])
        if peer is None:
            raise RuntimeError(f"the packet goes to {out['underlay']}, which is no host of this lab")
        else:
            back = control.request(peer[1]["socket"], {"op": "trace_in", "datagram": out["datagram"],
                                                       "outer_ip": out["outer_ip"]}, timeout=5)
            if "error" in back:
                raise RuntimeError(back["error"])
            steps += [{"host": peer[0], **s} for s in back["steps"]]
            delivered = back.get("delivered", False)
    denied = next((s for s in steps if s.get("result") == "deny" and s.get("rule")), None)
    return {"packet": _summary(protocol, src_inst["ip"], dst, port), "steps": steps,
            "verdict": "delivered" if delivered else "dropped",
            "denied_by": denied["rule"] if denied else None}


def _summary(protocol: str, src: str, dst: str, port: int | None) -> str:
    return f"{protocol} {src} → {dst}" + (f":{port}" if port and protocol != "icmp" else "")


def render(result: dict) -> str:
    lines = [f"trace {result['packet']}"]
    for s in result["steps"]:
        what = s.get("rule") or s.get("reason") or ""
        detail = s.get("detail")
        lines.append(f"  [{s['host']}] {s['step']:<28} {s.get('result', ''):<6} {what}"
                     + (f" ({detail})" if detail else ""))
    lines.append(f"verdict: {result['verdict']}" + (f", denied by {result['denied_by']}" if result["denied_by"] else ""))
    return "\n".join(lines)
