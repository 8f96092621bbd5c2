"""Clients of the VPC API: a blocking one for the CLI, and a watcher for agents.

The API is reached over HTTP on TCP (``http://host:port``), over HTTPS with a client certificate
(``https://host:port`` and a ``config.TlsConfig``: the control plane's TCP listener with ``tls`` requires
one; the server must present a certificate of the same CA naming that host), or on a Unix socket
(``unix:///path``). Every client takes ``tls=``; it applies to ``https://`` URLs only.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import httpx

from .. import logs, pki


def _transport_and_base(url: str, asynchronous: bool):
    if url.startswith("unix://"):
        path = url[len("unix://"):]
        transport = httpx.AsyncHTTPTransport(uds=path) if asynchronous else httpx.HTTPTransport(uds=path)
        return transport, "http://vpc"
    return None, url.rstrip("/")


def http_options(url: str, asynchronous: bool, tls=None) -> dict:
    """``base_url``, ``transport`` and ``verify`` for an httpx client of the API at ``url``."""
    transport, base = _transport_and_base(url, asynchronous)
    options = {"base_url": base, "transport": transport}
    if tls is not None and base.startswith("https://"):
        options["verify"] = pki.client_context(tls)  # our certificate, and the server checked against the CA
    return options


class ApiRequestError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.field = status, message, field


def _result(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if response.is_error:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise ApiRequestError(response.status_code, err.get("message", str(body)), err.get("field"))
    return body


class ApiClient:
    """Blocking client: ``ApiClient(url, token).call("POST", "/v1/vpcs", {...})``."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0, tls=None):
        self.http = httpx.Client(**http_options(url, False, tls), timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> Any:
        return _result(self.http.request(method, path, json=body, params=params))

    def close(self) -> None:
        self.http.close()


class DesiredStateWatcher:
    """Keeps an agent's copy of the data plane's desired state current.

    Long-polls ``/v1/infra/desired``; each answer newer than the last is handed to ``on_view``. While the
    control plane is unreachable the agent keeps what it has (forwarding goes on) and retries; after a
    restart it resynchronises from the full view.
    """

    POLL = 25.0  # seconds the server may hold a long poll

    def __init__(self, url: str, token: str, on_view: Callable[[dict], Awaitable[None]], tls=None):
        self.http = httpx.AsyncClient(**http_options(url, True, tls), timeout=self.POLL + 10,
                                      headers={"Authorization": f"Bearer {token}"})
        self.on_view = on_view
        self.revision = -1
        self.connected = False
        self.views = 0
        self.errors = 0
        self.synced = asyncio.Event()
        self._log = logs.get("desired-state")

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                view = _result(await self.http.get("/v1/infra/desired", params={
                    "after": self.revision, "wait": self.POLL if self.revision >= 0 else 0}))
            except (httpx.HTTPError, ApiRequestError, OSError) as e:
                if self.connected or not self.errors:
                    self._log.warning("control plane unreachable; keeping the last desired state", error=str(e))
                self.connected = False
                self.errors += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if not self.connected:
                self._log.info("control plane connected", revision=view["revision"])
            self.connected = True
            if view["revision"] != self.revision or not self.synced.is_set():
                self.revision = view["revision"]
                self.views += 1
                try:
                    await self.on_view(view)
                except Exception:  # a bug in converging must not stop watching
                    self.errors += 1
                    self._log.exception("applying the desired state failed")
                self.synced.set()

    def status(self) -> dict:
        return {"connected": self.connected, "revision": self.revision, "views": self.views, "errors": self.errors}
