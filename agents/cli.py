"""``vpc``: the command line of the userspace VPC.

    vpc up [FILE]               start a lab from a topology file (default configs/demo.yaml)
    vpc down                    remove everything the lab made (safe to repeat, and after a crash)
    vpc status [--json]         every component and its health
    vpc exec INSTANCE -- CMD…   run a command inside an instance (its exit code passes through)
    vpc demo                    up, a web server, curl across hosts, ping, iperf3, down
    vpc apply FILE              make the account's VPCs, subnets, instances and policy what FILE says
    vpc get KIND [ID]           list or describe resources: vpcs, subnets, instances, security-groups…
    vpc create KIND key=value…  create (values are JSON when they parse: 5, true, ["sg-…"])
    vpc modify KIND ID key=value…
    vpc delete KIND ID
    vpc audit [--since T]       the audit log of mutating calls
    vpc flow-logs FL_ID [--start UNIX] [--end UNIX] [--limit N]
                                a flow log's delivered records: the header line, then one record a line
    vpc trace SRC DST [tcp|udp|icmp] [PORT] [--json]
                                every decision on a packet's way (checks, rules, route, mapping),
                                made by the data path's own code as a dry run; exit 1 if dropped
    vpc flows [INSTANCE]        the tracked flows of each ENI (conntrack): state, packets, time left
    vpc hyperplane shards       the Hyperplane fleet, each NAT gateway's and load balancer's shard of
                                nodes, and how much shards overlap (against random shards)
    vpc account create NAME     (admin) a new account and its token
    vpc pki init [--dir DIR]    a CA for the control channels' certificates (default /etc/userspace-vpc/pki)
    vpc pki issue ROLE NAME [--ip IP]… [--dns NAME]… [--dir DIR]
                                NAME.crt and NAME.key for a component; ROLE: control-plane, mapping,
                                edge, hyperplane, host or admin
    vpc agent ROLE --config FILE [--check-config]
                                run a daemon (as vpc-ROLE does): control-plane, mapping-daemon, edge,
                                hyperplane, host-agent; --check-config validates FILE and names the bad field
    vpc install-units [--prefix /] [--bin DIR] [--role ROLE]… [--enable]
                                the systemd units (configs/systemd/) and example configs, in place
Every command takes ``--lab NAME`` (default $VPC_LAB or "vpc") so several labs can coexist. API
commands use the lab's default account (``--admin`` for the admin token), or $VPC_API_URL with
$VPC_TOKEN for a deployment that is not a lab ($VPC_TLS_CA, $VPC_TLS_CERT and $VPC_TLS_KEY: the
client certificate for an https:// control plane that requires one).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from agents.lab import Lab, LabError, default_lab
from vswitch.controlplane.client import ApiRequestError
from vswitch.topology import TopologyError, load_topology

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def print_instances(state: dict) -> None:
    rows = [("INSTANCE", "VPC", "SUBNET", "ADDRESS", "IPV6", "HOST", "DEVICE", "ENI")]
    rows += [(n, i["vpc"], i["subnet"], i["ip"], i.get("ipv6") or "-", i["host"], i.get("interface_type", "tun"),
              i["eni"]) for n, i in state["instances"].items()]
    _table(rows)


def _table(rows) -> None:
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def cmd_up(args) -> int:
    path = args.file or str(DEFAULT_TOPOLOGY)
    topo = load_topology(path)
    lab = Lab(args.lab)
    state = lab.up(topo, path, say=lambda m: print(m, file=sys.stderr))
    print(f"lab {lab.name!r} is up ({len(state['components'])} components). Instances:")
    print_instances(state)
    print(f"\nTry: vpc exec {next(iter(state['instances']), 'INSTANCE')} -- ping -c 3 ADDRESS"
          + ("" if lab.name == "vpc" else f"   (with --lab {lab.name})"))
    return 0


def cmd_down(args) -> int:
    removed = Lab(args.lab).down()
    print(f"lab {args.lab or default_lab()!r}: " + (f"removed {len(removed)} things" if removed else "nothing to remove"))
    return 0


def cmd_status(args) -> int:
    status = Lab(args.lab).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"lab {status['lab']!r} from {status['topology']}")
    rows = [("COMPONENT", "ROLE", "PID", "HEALTH", "UNDERLAY", "DETAIL")]
    healthy = True
    for name, c in status["components"].items():
        d = c["detail"]
        if c["role"] == "host_agent":
            drops = sum(sum(v.values()) for k, v in d.items() if k.endswith("_drops")) if "enis" in d else "?"
            # Losses in kernel queues: the instance out-ran the agent, or the agent its socket.
            kernel = (sum(e.get("device", {}).get("tx_dropped", 0) for e in d.get("enis", []))
                      + d.get("kernel_udp", {}).get("RcvbufErrors", 0))
            detail = (f"enis={len(d.get('enis', []))} mappings={d.get('mapping', {}).get('entries', '?')} "
                      f"daemon={'up' if d.get('mapping', {}).get('connected') else 'DOWN'} drops={drops} "
                      f"kernel_queue_drops={kernel}")
        elif c["role"] == "control_plane":
            detail = f"revision={d.get('revision', '?')}"
        elif c["role"] == "edge_agent":
            detail = f"relayed={d.get('relayed', '?')} mappings={d.get('mapping', {}).get('entries', '?')}"
        elif c["role"] == "hyperplane_agent":
            flows = sum(g.get("ActiveConnectionCount", 0) for g in d.get("nat_gateways", {}).values()) + sum(
                li.get("flows", 0) for lb in d.get("load_balancers", {}).values() for li in lb["listeners"].values())
            alive = sum(1 for x in d.get("fleet", {}).get("nodes", {}).values() if x["alive"])
            detail = f"flows={flows} nodes_alive={alive} drops={sum(d.get('drops', {}).values())}"
        else:
            detail = f"entries={d.get('entries', '?')} subscribers={d.get('subscribers', '?')}"
        healthy &= c["health"] == "ready"
        rows.append((name, c["role"], c["pid"], c["health"], c["underlay_ip"], detail))
    _table(rows)
    print()
    metric_rows = [("COMPONENT", "ENDPOINT", "METRICS")]
    for name, c in status["components"].items():
        m = c.get("metrics")
        if m is not None:
            shown = m.get("error") or " ".join(f"{k}={v}" for k, v in m.items()
                                                if k not in ("role", "endpoint", "scrape_ms") and v is not None)
            metric_rows.append((name, m["endpoint"], shown))
    if len(metric_rows) > 1:
        _table(metric_rows)
        print()
    print_instances(status)
    return 0 if healthy else 1


def cmd_exec(args) -> int:
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = Lab(args.lab).exec_argv(args.instance, cmd)
    os.execvp(argv[0], argv)


def _api(args):
    from vswitch.controlplane.client import ApiClient
    url, token = os.environ.get("VPC_API_URL"), os.environ.get("VPC_TOKEN")
    if url and token:
        tls = [os.environ.get(f"VPC_TLS_{k}") for k in ("CA", "CERT", "KEY")]
        if all(tls):
            from vswitch.config import TlsConfig
            return ApiClient(url, token, tls=TlsConfig(ca=tls[0], cert=tls[1], key=tls[2]))
        return ApiClient(url, token)
    return Lab(args.lab).api(admin=getattr(args, "admin", False))


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str]) -> dict:
    body = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabError(f"expected key=value, got {item!r}")
        body[key] = _value(value)
    return body


# Columns worth a table, by preference; a resource shows those it has.
COLUMNS = ("id", "name", "cidr_block", "vpc_id", "subnet_id", "private_ip", "public_ip", "connectivity_type", "host",
           "vni", "instance_id", "nat_gateway_id", "eni_id", "protocol", "port", "resource_id", "traffic_type")


def _print_resources(rows: list[dict]) -> None:
    if not rows:
        print("(none)")
        return
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    _table([tuple(c.upper() for c in cols)] + [tuple("-" if r.get(c) is None else r.get(c) for c in cols)
                                                for r in rows])


def _output(args, result) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    elif isinstance(result, list):
        _print_resources(result)
    elif isinstance(result, dict):
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k.ljust(width)}  {json.dumps(v) if isinstance(v, (list, dict)) else v}")


def _collection(kind: str) -> str:
    from vswitch.controlplane.resources import KINDS
    if kind not in KINDS:
        raise LabError(f"unknown kind {kind!r}; one of: {', '.join(KINDS)}")
    return kind


def cmd_get(args) -> int:
    path = f"/v1/{_collection(args.kind)}" + (f"/{args.id}" if args.id else "")
    _output(args, _api(args).call("GET", path, params=_pairs(args.filter) if args.filter else None))
    return 0


def cmd_create(args) -> int:
    _output(args, _api(args).call("POST", f"/v1/{_collection(args.kind)}", _pairs(args.fields)))
    return 0


def cmd_modify(args) -> int:
    _output(args, _api(args).call("PATCH", f"/v1/{_collection(args.kind)}/{args.id}", _pairs(args.fields)))
    return 0


def cmd_delete(args) -> int:
    _api(args).call("DELETE", f"/v1/{_collection(args.kind)}/{args.id}")
    print(f"deleted {args.id}")
    return 0


def cmd_apply(args) -> int:
    from agents.apply import apply_topology
    lab = Lab(args.lab)
    changes = apply_topology(_api(args), load_topology(args.file))
    for line in changes:
        print(line)
    if not changes:
        print("no changes")
    elif lab.exists() and not os.environ.get("VPC_API_URL"):
        lab.wait_converged()
    return 0


def cmd_audit(args) -> int:
    entries = _api(args).call("GET", "/v1/audit", params={"since": args.since})
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    rows = [("TIME", "ACCOUNT", "ACTION", "RESOURCE", "STATUS", "REQUEST", "SOURCE")]
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["time"]))
        rows.append((when, e["account"], e["action"], e["resource"] or "-", e["status"], e["request_id"],
                     e["source"]))
    _table(rows)
    return 0


def cmd_flow_logs(args) -> int:
    params = {k: v for k, v in (("start", args.start), ("end", args.end), ("limit", args.limit)) if v is not None}
    result = _api(args).call("GET", f"/v1/flow-logs/{args.id}/records", params=params)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(" ".join(result["fields"]))  # the delivered files' format: header, then space-separated records
    for row in result["records"]:
        print(" ".join(row))
    return 0


def cmd_trace(args) -> int:
    from agents.trace import render, trace
    lab = Lab(args.lab)
    try:
        result = trace(lab.state(), lab.instances(), args.source, args.destination, args.protocol, args.port,
                       args.sport, args.ipv6)
    except (ValueError, RuntimeError) as e:
        raise LabError(str(e)) from None
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["verdict"] == "delivered" else 1


def cmd_flows(args) -> int:
    from vswitch import control
    rows = [("INSTANCE", "PROTO", "LOCAL", "REMOTE", "STATE", "DIR", "PACKETS", "EXPIRES_IN")]
    everything = {}
    for name, c in Lab(args.lab).state()["components"].items():
        if c["role"] != "host_agent":
            continue
        answer = control.request(c["socket"], {"op": "flows", "instance": args.instance, "limit": args.limit})
        for inst, flows in answer.get("flows", {}).items():
            everything[inst] = flows
            rows += [(inst, f["protocol"], f"{f['local']}:{f['local_port']}", f"{f['remote']}:{f['remote_port']}",
                      f["state"], "out" if f["outbound"] else "in", f["packets"], f"{f['expires_in']} s")
                     for f in flows]
    if args.json:
        print(json.dumps(everything, indent=2))
    else:
        _table(rows)
    return 0


def cmd_hyperplane(args) -> int:
    """The fleet, each NAT gateway's and load balancer's shard, and how much shards overlap."""
    from vswitch import control, hyperplane_shard
    answer = None
    for name, c in Lab(args.lab).state()["components"].items():
        if c["role"] == "hyperplane_agent":
            try:
                answer = control.request(c["socket"], {"op": "shards"}, timeout=3)
                break
            except (OSError, ValueError):
                continue  # that node is down: ask the next
    if answer is None:
        raise LabError("no Hyperplane node answered")
    shards = {rid: r["shard"] for rid, r in answer["resources"].items()}
    n, k = len(answer["nodes"]), answer["shard_size"]
    ov = hyperplane_shard.overlap(shards)
    expected = hyperplane_shard.expected_overlap(n, min(k, n)) if n else {}
    if args.json:
        print(json.dumps({**answer, "overlap": ov.as_dict(), "expected_overlap": expected}, indent=2))
        return 0
    print(f"fleet: {n} nodes, shard size {k}; alive: {', '.join(answer['alive']) or 'none'}")
    dead = sorted(set(answer["nodes"]) - set(answer["alive"]))
    if dead:
        print(f"dead: {', '.join(dead)}")
    _table([("RESOURCE", "ACCOUNT", "SHARD")] + [(rid, r["account"], " ".join(r["shard"]))
                                                  for rid, r in answer["resources"].items()])
    if ov.pairs:
        print(f"\noverlap over {ov.pairs} pairs of resources (nodes in common: share of pairs, and for random shards)")
        for j in range(min(k, n) + 1):
            print(f"  {j}: {ov.fraction(j):7.2%}   expected {expected.get(j, 0):7.2%}")
        print(f"  pairs sharing their whole shard: {ov.sharing_all}")
    return 0


def cmd_account(args) -> int:
    args.admin = True
    _output(args, _api(args).call("POST", "/v1/accounts", {"name": args.name}))
    return 0


def cmd_pki(args) -> int:
    """``vpc pki init`` / ``vpc pki issue``: the CA and the certificates of the control channels."""
    from vswitch import pki
    try:
        if args.action == "init":
            print(f"CA created: {pki.init(args.dir)} (its key {Path(args.dir) / pki.CA_KEY}, mode 0600)")
        else:
            crt, key = pki.issue(args.dir, args.role, args.name, args.ip, args.dns)
            print(f"issued {args.role} certificate for {args.name!r}: {crt}, {key}")
    except pki.PkiError as e:
        raise LabError(str(e)) from None
    return 0


def cmd_agent(args) -> int:
    """``vpc agent ROLE --config FILE [--check-config]``: the daemon itself, as ``vpc-ROLE`` runs it."""
    from agents import roles
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a daemon, not a pipeline's stage: Python's default
    roles.main(args.role, args.daemon_args)
    return 0


def cmd_install_units(args) -> int:
    from agents.install_units import InstallError, install
    try:
        install(args.prefix, args.bin, args.enable, args.role)
    except InstallError as e:
        raise LabError(str(e)) from None
    return 0


def cmd_demo(args) -> int:
    from agents.demo import run_demo
    return run_demo(args.lab or "demo")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command itself, not a caller in-process (a test must not die of SIGPIPE)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `vpc status | head` ends quietly
    p = argparse.ArgumentParser(prog="vpc", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--lab", default=None, help="lab name (default $VPC_LAB or 'vpc')")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("up", help="start a lab from a topology file")
    s.add_argument("file", nargs="?")
    s.set_defaults(func=cmd_up)
    sub.add_parser("down", help="remove everything the lab made").set_defaults(func=cmd_down)
    s = sub.add_parser("status", help="every component and its health")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("exec", help="run a command inside an instance")
    s.add_argument("instance")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_exec)
    sub.add_parser("demo", help="the demo VPC, end to end").set_defaults(func=cmd_demo)
    s = sub.add_parser("apply", help="make the account's resources what a topology file says")
    s.add_argument("file")
    s.set_defaults(func=cmd_apply)
    for name, func, extra in (("get", cmd_get, ("id?",)), ("create", cmd_create, ("fields*",)),
                              ("modify", cmd_modify, ("id", "fields*")), ("delete", cmd_delete, ("id",))):
        s = sub.add_parser(name, help=f"{name} resources through the API")
        s.add_argument("kind", help="vpcs, subnets, instances, security-groups, network-acls, …")
        for a in extra:
            s.add_argument(a.rstrip("?*"), nargs="?" if a.endswith("?") else "*" if a.endswith("*") else None)
        if name == "get":
            s.add_argument("-f", "--filter", action="append", help="key=value (vpc_id, subnet_id, name, host)")
        s.add_argument("--json", action="store_true")
        s.add_argument("--admin", action="store_true", help="use the admin token")
        s.set_defaults(func=func)
    s = sub.add_parser("audit", help="the audit log of mutating calls")
    s.add_argument("--since", type=float, default=0, help="Unix time")
    s.add_argument("--json", action="store_true")
    s.add_argument("--admin", action="store_true", help="every account's entries")
    s.set_defaults(func=cmd_audit)
    s = sub.add_parser("flow-logs", help="a flow log's delivered records")
    s.add_argument("id", metavar="FL_ID")
    s.add_argument("--start", type=float, help="Unix time: records that end at or after it")
    s.add_argument("--end", type=float, help="Unix time: records that start at or before it")
    s.add_argument("--limit", type=int, help="the newest N records (default 10000)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_flow_logs)
    s = sub.add_parser("trace", help="every decision on a packet's way, from the data path's own code")
    s.add_argument("source", help="the source instance")
    s.add_argument("destination", help="an instance name or address")
    s.add_argument("protocol", nargs="?", default="tcp", choices=("tcp", "udp", "icmp"))
    s.add_argument("port", nargs="?", type=int, default=None, help="destination port (tcp 80, udp 53)")
    s.add_argument("--sport", type=int, default=None, help="source port (default: a random ephemeral one)")
    s.add_argument("-6", dest="ipv6", action="store_true", help="IPv6: an instance name means its IPv6 address")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_trace)
    s = sub.add_parser("flows", help="tracked flows (connection tracking) of every ENI, or one instance's")
    s.add_argument("instance", nargs="?")
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_flows)
    s = sub.add_parser("hyperplane", help="the Hyperplane fleet: NAT gateways' and load balancers' shards")
    s.add_argument("what", choices=["shards"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_hyperplane)
    s = sub.add_parser("account", help="accounts (admin)")
    s.add_argument("action", choices=["create"])
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_account)
    # vpc pki init | issue: the CA and certificates of the control channels (vswitch/pki.py)
    from vswitch.pki import DEFAULT_DIR, ROLES
    s = sub.add_parser("pki", help="the CA and certificates of the control channels (mutual TLS)")
    pki_sub = s.add_subparsers(dest="action", required=True)
    sp = pki_sub.add_parser("init", help="create a CA (refuses if one is there)")
    sp.add_argument("--dir", default=DEFAULT_DIR, help=f"where the CA lives (default {DEFAULT_DIR})")
    sp = pki_sub.add_parser("issue", help="issue NAME.crt and NAME.key, signed by the CA in --dir")
    sp.add_argument("role", choices=ROLES)
    sp.add_argument("name", help="the component's name (its certificate's CN, and the files' names)")
    sp.add_argument("--ip", action="append", default=[], help="an address it serves on (IP SAN); repeatable")
    sp.add_argument("--dns", action="append", default=[], help="a DNS name it serves as (DNS SAN); repeatable")
    sp.add_argument("--dir", default=DEFAULT_DIR, help=f"the CA's directory (default {DEFAULT_DIR})")
    s.set_defaults(func=cmd_pki)
    # vpc agent ROLE …: a daemon (agents/roles.py); vpc install-units: its systemd units (agents/install_units.py)
    from agents.roles import ROLES as DAEMON_ROLES
    s = sub.add_parser("agent", help="run a daemon: vpc agent ROLE --config FILE [--check-config]")
    s.add_argument("role", choices=DAEMON_ROLES)
    s.add_argument("daemon_args", nargs=argparse.REMAINDER, help="--config FILE [--check-config]")
    s.set_defaults(func=cmd_agent)
    s = sub.add_parser("install-units", help="install the systemd units and example configs")
    s.add_argument("--prefix", default="/", help="the root to install under (default /)")
    s.add_argument("--bin", default=None, help="where the vpc-ROLE scripts are (default: this Python's)")
    s.add_argument("--role", action="append", default=[], choices=DAEMON_ROLES,
                   help="a role of this machine: its example becomes /etc/userspace-vpc/ROLE.toml; repeatable")
    s.add_argument("--enable", action="store_true", help="systemctl enable vpc.target and the units")
    s.set_defaults(func=cmd_install_units)
    # `--lab` may also follow the sub-command.
    for sp in sub.choices.values():
        sp.add_argument("--lab", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (LabError, TopologyError) as e:
        print(f"vpc: {e}", file=sys.stderr)
        return 2
    except ApiRequestError as e:
        print(f"vpc: refused ({e.status}): {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
