"""The control plane's TCP listener with ``tls``: HTTPS that requires a client certificate of the CA, with
the bearer token still required on top; the agents' clients (ApiClient, DesiredStateWatcher,
FlowLogShipper) reach it at https://HOST:PORT with their TlsConfig. Real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import ssl

import httpx
import pytest
import uvicorn

from agents.control_plane import tcp_config
from vswitch import config, pki
from vswitch.controlplane.api import build_app
from vswitch.controlplane.client import ApiClient, ApiRequestError, DesiredStateWatcher
from vswitch.controlplane.service import ControlPlane
from vswitch.flowlog_shipper import FlowLogShipper
from vswitch.store import open_store

ADMIN = "admin-token-for-tls-test"


def tls(directory, name) -> config.TlsConfig:
    return config.TlsConfig(ca=str(directory / "ca.crt"), cert=str(directory / f"{name}.crt"),
                            key=str(directory / f"{name}.key"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_listener_requires_a_client_certificate(tmp_path):
    d, other = tmp_path / "pki", tmp_path / "other"
    pki.init(d)
    pki.issue(d, "control-plane", "control-plane", ips=["127.0.0.1"])
    pki.issue(d, "host", "host-a", ips=["198.18.0.11"])
    pki.init(other)
    pki.issue(other, "host", "host-a", ips=["198.18.0.11"])
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    cfg = config.ControlPlaneConfig(listen=f"127.0.0.1:{port}", admin_token_file=str(tmp_path / "admin.token"),
                                    store=f"sqlite:///{tmp_path / 'cp.db'}", tls=tls(d, "control-plane"))

    def refused(base=url, **client) -> bool:
        try:
            with httpx.Client(timeout=5, **client) as http:
                http.get(f"{base}/healthz")
        except httpx.TransportError:
            return True
        return False

    def blocking_checks() -> dict:
        anonymous = ssl.create_default_context(cafile=str(d / "ca.crt"))
        stranger = ssl.create_default_context(cafile=str(d / "ca.crt"))
        stranger.load_cert_chain(str(other / "host-a.crt"), str(other / "host-a.key"))
        results = {"no certificate": refused(verify=anonymous),
                   "another CA": refused(verify=stranger),
                   "plain http": refused(base=f"http://127.0.0.1:{port}")}
        api = ApiClient(url, ADMIN, tls=tls(d, "host-a"))
        results["healthz"] = api.call("GET", "/healthz")
        results["admin"] = api.call("GET", "/v1/hosts")
        try:  # the certificate authenticates the machine; the account still needs its token
            ApiClient(url, "not-a-token", tls=tls(d, "host-a")).call("GET", "/v1/vpcs")
        except ApiRequestError as e:
            results["bad token"] = e.status
        return results

    async def scenario():
        store = open_store(cfg.store)
        cp = ControlPlane(store, cfg.region)
        await cp.ensure_admin_token(ADMIN)
        server = uvicorn.Server(tcp_config(build_app(cp), cfg))
        server.install_signal_handlers = lambda: None
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
        try:
            results = await asyncio.to_thread(blocking_checks)
            # The agents' asynchronous clients, as a host agent with tls = {…} and an https:// URL has them.
            views = []

            async def on_view(view):
                views.append(view)

            watcher = DesiredStateWatcher(url, ADMIN, on_view, tls=tls(d, "host-a"))
            watcher.POLL = 0.2  # its next long poll must not hold the server's shutdown
            watch = asyncio.create_task(watcher.run())
            await asyncio.wait_for(watcher.synced.wait(), 5)
            watch.cancel()
            await watcher.http.aclose()
            shipper = FlowLogShipper(url, ADMIN, "host-a", tls=tls(d, "host-a"))
            await shipper.ship("fl-0123456789abcdef0", ["x"], 0.0, 60.0)  # no such flow log: refused, not lost
            await shipper.aclose()
            unauthenticated = DesiredStateWatcher(url, ADMIN, on_view)  # no certificate: stays unconnected
            other_task = asyncio.create_task(unauthenticated.run())
            await asyncio.sleep(0.3)
            other_task.cancel()
            await unauthenticated.http.aclose()
        finally:
            server.should_exit = True
            await task
            await store.close()
        return results, views, shipper, unauthenticated

    results, views, shipper, unauthenticated = asyncio.run(scenario())
    assert results["no certificate"] and results["another CA"] and results["plain http"]
    assert results["healthz"]["ok"] and results["admin"] == []
    assert results["bad token"] == 401
    assert views and "enis" in views[0]
    assert shipper.connected and shipper.counters["rejected_batches"] == 1
    assert not unauthenticated.connected and unauthenticated.errors >= 1 and not unauthenticated.synced.is_set()


def test_unusable_credentials_stop_the_start(tmp_path):
    cfg = config.ControlPlaneConfig(listen="127.0.0.1:1", admin_token_file=str(tmp_path / "t"),
                                    tls=config.TlsConfig(ca=str(tmp_path / "ca.crt"), cert=str(tmp_path / "c"),
                                                         key=str(tmp_path / "k")))
    with pytest.raises(pki.PkiError, match="tls.ca"):
        tcp_config(None, cfg)
