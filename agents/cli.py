"""``vpc``: the command line of the userspace VPC.

    vpc up [FILE]               start a lab from a topology file (default configs/demo.yaml)
    vpc down                    remove everything the lab made (safe to repeat, and after a crash)
    vpc status [--json]         every component and its health
    vpc exec INSTANCE -- CMD…   run a command inside an instance (its exit code passes through)
    vpc demo                    up, a web server, curl across hosts, ping, iperf3, down
Every command takes ``--lab NAME`` (default $VPC_LAB or "vpc") so several labs can coexist.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from agents.lab import Lab, LabError, default_lab
from vswitch.topology import TopologyError, load_topology

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def print_instances(state: dict) -> None:
    rows = [("INSTANCE", "VPC", "SUBNET", "ADDRESS", "HOST", "ENI")]
    rows += [(n, i["vpc"], i["subnet"], i["ip"], i["host"], i["eni"]) for n, i in state["instances"].items()]
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
        else:
            detail = f"entries={d.get('entries', '?')} subscribers={d.get('subscribers', '?')}"
        healthy &= c["health"] == "ready"
        rows.append((name, c["role"], c["pid"], c["health"], c["underlay_ip"], detail))
    _table(rows)
    print()
    print_instances(status)
    return 0 if healthy else 1


def cmd_exec(args) -> int:
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = Lab(args.lab).exec_argv(args.instance, cmd)
    os.execvp(argv[0], argv)


def cmd_demo(args) -> int:
    from agents.demo import run_demo
    return run_demo(args.lab or "demo")


def main(argv: list[str] | None = None) -> int:
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
    # `--lab` may also follow the sub-command.
    for sp in sub.choices.values():
        sp.add_argument("--lab", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (LabError, TopologyError) as e:
        print(f"vpc: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
