"""Authenticated control channels in a real lab: the mapping daemon's TCP channel on the underlay is
mutual TLS with the lab's CA. A process on the underlay without a certificate of that CA (none, or a
self-made one) cannot subscribe; the agents, with theirs, work."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from agents.lab import ADMIN_CERT, MAPPING_IP, MAPPING_PORT, UNDERLAY, run
from vswitch import pki

pytestmark = pytest.mark.root
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROBE = Path(__file__).resolve().parent / "mapping_probe.py"
PROBE_IP = UNDERLAY[250]


def test_mapping_channel_refuses_callers_without_a_lab_certificate(lab_factory, tmp_path):
    lab = lab_factory(str(CONFIGS / "demo.yaml"))
    pki_dir = lab.lab.pki_dir
    # Every daemon was given its credential.
    for name, c in lab.state["components"].items():
        cfg = tomllib.loads(Path(c["config"]).read_text())
        assert cfg["tls"]["cert"] == str(pki_dir / f"{name}.crt"), name
    # A new machine on the underlay: a namespace on the lab's bridge (`down` removes it with the lab's).
    probe, underlay = lab.lab.ns("probe"), lab.lab.ns("underlay")
    run("ip", "netns", "add", probe)
    run("ip", "-n", underlay, "link", "add", "probe0", "type", "veth", "peer", "name", "eth0", "netns", probe)
    run("ip", "-n", underlay, "link", "set", "probe0", "master", "br0", "up")
    run("ip", "-n", probe, "addr", "add", f"{PROBE_IP}/{UNDERLAY.prefixlen}", "dev", "eth0")
    run("ip", "-n", probe, "link", "set", "eth0", "up")
    # Its own CA and a well-formed certificate claiming to be a host at its address.
    mine = tmp_path / "self-made"
    pki.init(mine)
    pki.issue(mine, "host", "host-a", ips=[str(PROBE_IP)])
    before = lab.status("mapping")
    attempts = {"plain": "plain", "anonymous": "none", "self-made": f"{mine / 'host-a.crt'}:{mine / 'host-a.key'}",
                "lab-admin": f"{pki_dir / (ADMIN_CERT + '.crt')}:{pki_dir / (ADMIN_CERT + '.key')}"}
    out = lab.in_ns(probe, sys.executable, str(PROBE), str(MAPPING_IP), str(MAPPING_PORT),
                    str(pki_dir / "ca.crt"), *(f"{k}={v}" for k, v in attempts.items()))
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    for who in ("plain", "anonymous", "self-made"):
        assert results[who].startswith("refused"), results
    assert results["lab-admin"] == "subscribed", results  # the address is reachable: it is the credential
    after = lab.status("mapping")
    assert after["tls"] and after["tls_refused"] - before["tls_refused"] == 3
    assert after["entries"] == before["entries"]  # nothing was pushed
    # The agents work through it all: subscribed with their certificates, instances reach each other.
    for name in ("host-a", "host-b", "edge"):
        assert lab.status(name)["mapping"]["connected"], name
    assert lab.run("client", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab.ip("web")).returncode == 0
    assert lab.run("web", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab.ip("client")).returncode == 0
