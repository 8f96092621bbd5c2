"""Control plane: the VPC API over HTTP. ``vpc-control-plane --config control-plane.toml``.

Serves on a TCP address, a Unix socket (the lab's choice: no port in any namespace), or both. The
store is embedded SQLite by default, or etcd for deployments that span machines. The admin token is
read from a file (created with a random token if missing) so that no secret sits in the config.

With ``tls`` (``vswitch.pki``) the TCP listener is HTTPS and requires a client certificate of the
deployment's CA (any role): the certificate authenticates the machine, the bearer token still
authenticates the account. The Unix socket is unchanged (its file permissions guard it).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import ssl

import uvicorn

from agents import daemon
from vswitch import config, logs, pki
from vswitch.controlplane.api import build_app
from vswitch.controlplane.service import ControlPlane
from vswitch.store import open_store


def read_or_create_token(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def tcp_config(app, cfg: config.ControlPlaneConfig) -> uvicorn.Config:
    """The TCP listener's uvicorn config: HTTPS with required client certificates when ``cfg.tls``."""
    host, port = config.split_endpoint(cfg.listen)
    tls = {}
    if cfg.tls:
        context = pki.server_context(cfg.tls)  # TLS 1.2+, CERT_REQUIRED; a bad credential stops the start here
        tls = {"ssl_certfile": cfg.tls.cert, "ssl_keyfile": cfg.tls.key, "ssl_ca_certs": cfg.tls.ca,
               "ssl_cert_reqs": ssl.CERT_REQUIRED}
        if "ssl_context_factory" in inspect.signature(uvicorn.Config).parameters:  # newer uvicorn: ours (TLS 1.2+)
            tls["ssl_context_factory"] = lambda _config, _default: context
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off", **tls)


async def run(cfg: config.ControlPlaneConfig) -> None:
    log = logs.get("control-plane")
    store = open_store(cfg.store)
    cp = ControlPlane(store, cfg.region, flow_log_dir=cfg.flow_log_dir, public_ip_pool=cfg.public_ip_pool,
                      ipv6_pool=cfg.ipv6_pool)
    await cp.ensure_admin_token(read_or_create_token(cfg.admin_token_file))
    app = build_app(cp)
    servers = []
    if cfg.listen:
        servers.append(uvicorn.Server(tcp_config(app, cfg)))
    if cfg.unix_socket:
        servers.append(uvicorn.Server(uvicorn.Config(app, uds=cfg.unix_socket, log_config=None,
                                                     access_log=False, lifespan="off")))
    for s in servers:
        s.install_signal_handlers = lambda: None  # ours, below
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()
            raise SystemExit("control plane: a listener stopped while starting")
        await asyncio.sleep(0.02)
    if cfg.unix_socket:
        os.chmod(cfg.unix_socket, 0o660)
    log.info("ready", listen=cfg.listen, unix_socket=cfg.unix_socket, store=cfg.store.split("://")[0])
    daemon.started(cfg, cp)
    await daemon.until_signalled()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()


def main(argv: list[str] | None = None) -> None:
    daemon.run(argv, config.ControlPlaneConfig, run, __doc__)


if __name__ == "__main__":
    main()
