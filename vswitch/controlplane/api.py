"""The HTTP JSON API (FastAPI): every resource kind gets the same five routes, generated from the registry.

    POST   /v1/<collection>          create          (body validated by the kind's schema)
    GET    /v1/<collection>          list            (?vpc_id= &subnet_id= &name= &host= filters)
    GET    /v1/<collection>/<id>     describe
    PATCH  /v1/<collection>/<id>     change
    DELETE /v1/<collection>/<id>     delete
plus accounts, hosts, the audit log, /healthz, and the records of flow logs:

    POST   /v1/flow-logs/<id>/records   deliver one window's records (admin: the host agents)
    GET    /v1/flow-logs/<id>/records   the delivered records (?start= &end= &limit=)

The OpenAPI document is at /openapi.json.

Every call carries ``Authorization: Bearer <token>``. Errors are ``{"error": {"status", "message",
"field"}}``; every mutating call, refused or not, lands in the audit log with its request id
(``X-Request-Id``, echoed back) and source address.

(No ``from __future__ import annotations`` here: FastAPI reads the generated routes' annotations.)
"""

import re
import secrets
import time
from typing import Annotated, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..histogram import Histogram
from ..store import StoreError
from . import resources as r
from .service import ApiError, Caller, ControlPlane, _action

MUTATING = {"POST", "PATCH", "DELETE", "PUT"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_bearer = HTTPBearer(auto_error=False)


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# Unix seconds up to 9999-12-31T23:59:59Z: beyond it a time has no date to name a file by.
MAX_UNIX_TIME = 253402300799
FlowLogLine = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[!-~]+( [!-~]+)*$")]


class FlowLogRecordsPut(BaseModel):
    """One capture window's records of a flow log, from one host (see ControlPlane.put_flow_log_records)."""
    model_config = ConfigDict(extra="forbid")
    records: list[FlowLogLine] = Field(min_length=1, max_length=100_000)
    window_start: float = Field(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False)
    window_end: float = Field(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False)
    host: r.HostName

    @model_validator(mode="after")
    def _ordered(self):
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        return self


def action_for(method: str, path: str) -> tuple[str, Optional[str]]:
    """The audit action and resource of a call from its method and path (used when a request is
    refused before its route runs, e.g. by body validation)."""
    parts = [p for p in path.split("/") if p][1:]  # drop "v1"
    if not parts:
        return method, None
    kind = r.KINDS.get(parts[0])
    noun = _action(kind) if kind else parts[0].rstrip("s").capitalize()
    verb = {"POST": "Create", "PATCH": "Modify", "DELETE": "Delete", "PUT": "Put"}.get(method, method)
    if len(parts) > 2:  # a resource's sub-collection: POST /v1/flow-logs/<id>/records is PutFlowLogRecords
        noun += "".join(p.capitalize() for p in parts[2].split("-"))
        verb = "Put" if method == "POST" else verb
    return verb + noun, parts[1] if len(parts) > 1 else None


class ApiStats:
    """Requests by (method, route template, status) and their durations by (method, route): what
    ``vswitch.metrics`` serves as ``vpc_api_requests_total`` and ``vpc_api_request_duration_seconds``.
    The route is the template (``/v1/vpcs/{resource_id}``), never the raw path: one series per route."""

    METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
    UNMATCHED = "unmatched"  # no route: a 404 for any path, counted under one label

    def __init__(self):
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], Histogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in self.METHODS else "other"
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.durations.get((method, route))
        if h is None:
            h = self.durations[(method, route)] = Histogram()
        h.observe(seconds)


class ApiMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: nothing is buffered): the status the response started with, and
    the route the router matched (FastAPI leaves it in ``scope["route"]``). A request that raised counts 500."""

    def __init__(self, app, stats: ApiStats):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or ApiStats.UNMATCHED
            self.stats.observe(scope["method"], route, status, time.perf_counter() - start)


def build_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(title="userspace VPC API", version="1",
                  description="Create, describe, change and delete VPC resources. Bearer token required.")
    # Read by the metrics server (vswitch/metrics.py) through the component daemon.started is given: cp.
    app.state.api_stats = cp.api_stats = ApiStats()
    app.add_middleware(ApiMetricsMiddleware, stats=cp.api_stats)

    async def authenticate(request: Request, token: str) -> Optional[Caller]:
        """The caller a token names (remembered on the request for its audit record), or None."""
        found = await cp.authenticate(token)
        if found is not None:
            request.state.caller = Caller(found[0], found[1], request.state.request_id, request.state.source)
        return request.state.caller

    async def caller(request: Request,
                     credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> Caller:
        if credentials is None:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
        c = await authenticate(request, credentials.credentials)
        if c is None:
            raise ApiError(401, "unknown token")
        return c

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        rid = request.headers.get("x-request-id", "")
        request.state.request_id = rid if REQUEST_ID.match(rid) else "req-" + secrets.token_hex(8)
        request.state.source = request.client.host if request.client else "local"
        request.state.caller = None
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    async def refuse(request: Request, status: int, message: str, field: Optional[str]) -> JSONResponse:
        c = getattr(request.state, "caller", None)
        if request.method in MUTATING and c is not None:
            action, resource = action_for(request.method, request.url.path)
            try:
                await cp.record_refusal(c, action, resource, status, message)
            except StoreError:
                pass  # the refusal stands; the audit store is what is failing
        return JSONResponse({"error": {"status": status, "message": message, "field": field}}, status_code=status)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return await refuse(request, e.status, e.message, e.field)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError):
        # Validation runs before the route's dependencies: authenticate here so that the refusal is
        # audited under the right account, and so that a bad token still answers 401, not 422.
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or await authenticate(request, auth[7:]) is None:
            return await refuse(request, 401, "missing or unknown bearer token", None)
        problems, first = [], None
        for err in e.errors():
            where = ""
            for p in err["loc"]:
                if p in ("body", "query", "path"):
                    continue
                where += f"[{p}]" if isinstance(p, int) else (f".{p}" if where else str(p))
            where = where or "body"
            first = first or where
            problems.append(f"{where}: {err['msg']}")
        return await refuse(request, 422, "; ".join(problems), first)

    @app.exception_handler(StoreError)
    async def on_store(request: Request, e: StoreError):
        return JSONResponse({"error": {"status": 503, "message": f"store unavailable: {e}", "field": None}},
                            status_code=503)

    @app.get("/healthz", tags=["meta"])
    async def healthz():
        return {"ok": True, "revision": await cp.store.revision()}

    @app.get("/v1/whoami", tags=["accounts"])
    async def whoami(c: Caller = Depends(caller)):
        """The caller's account, whether it is an admin, and the region (whose defaults, such as the
        ``<region>.compute.internal`` domain name, the API fills in)."""
        return {"account": c.account, "admin": c.admin, "region": cp.region}

    @app.post("/v1/accounts", status_code=201, tags=["accounts"])
    async def create_account(body: AccountCreate, c: Caller = Depends(caller)):
        return await cp.create_account(c, body.name)

    @app.get("/v1/accounts", tags=["accounts"])
    async def list_accounts(c: Caller = Depends(caller)):
        return await cp.list_accounts(c)

    @app.post("/v1/hosts", status_code=201, tags=["hosts"])
    async def register_host(body: r.HostCreate, c: Caller = Depends(caller)):
        return await cp.register_host(c, body)

    @app.get("/v1/hosts", tags=["hosts"])
    async def list_hosts(c: Caller = Depends(caller)):
        return await cp.list_hosts()

    @app.delete("/v1/hosts/{name}", status_code=204, tags=["hosts"])
    async def deregister_host(name: str, c: Caller = Depends(caller)):
        await cp.deregister_host(c, name)
        return Response(status_code=204)

    @app.get("/v1/infra/desired", tags=["infrastructure"])
    async def infra_desired(after: int = Query(-1, ge=-1, le=2**62), wait: float = Query(0, ge=0, le=60),
                            c: Caller = Depends(caller)):
        """The data plane's desired state. With ``after`` and ``wait``: a long poll that answers as
        soon as anything newer than revision ``after`` is written (agents converge in well under 1 s)."""
        if not c.admin:
            raise ApiError(403, "the infrastructure view needs an admin (infrastructure) token")
        if after >= 0 and wait:
            await cp.wait_for_change(after, wait)
        return await cp.infra_view(c)

    @app.get("/v1/audit", tags=["audit"])
    async def audit(since: float = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000),
                    c: Caller = Depends(caller)):
        return await cp.audit_log(c, since, limit)

    @app.post("/v1/flow-logs/{resource_id}/records", status_code=201, tags=["flow-logs"],
              name="put-fl-records")
    async def put_flow_log_records(resource_id: str, body: FlowLogRecordsPut, c: Caller = Depends(caller)):
        """Deliver one capture window's records (admin: the host agents). Written as one gzip file in the
        cloud's S3 layout; a repeated delivery rewrites the same file."""
        return await cp.put_flow_log_records(c, resource_id, body.records, body.window_start, body.window_end,
                                             body.host)

    @app.get("/v1/flow-logs/{resource_id}/records", tags=["flow-logs"], name="get-fl-records")
    async def flow_log_records(resource_id: str,
                               start: Optional[float] = Query(None, ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False),
                               end: Optional[float] = Query(None, ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False),
                               limit: int = Query(10000, ge=1, le=100_000), c: Caller = Depends(caller)):
        """The flow log's delivered records, oldest first (the newest ``limit``); with ``start``/``end``
        (Unix seconds) those whose [start, end] overlaps them."""
        return await cp.flow_log_records(c, resource_id, start, end, limit)

    for kind in r.KINDS.values():
        _routes(app, cp, kind, caller)
    return app


def _routes(app: FastAPI, cp: ControlPlane, kind: r.Kind, caller) -> None:
    base, tag = f"/v1/{kind.collection}", kind.collection

    if kind.create is not None:
        @app.post(base, status_code=201, tags=[tag], name=f"create-{kind.prefix}")
        async def create(body: kind.create, c: Caller = Depends(caller)):
            return await cp.create(c, kind.collection, body)

    @app.get(base, tags=[tag], name=f"list-{kind.prefix}")
    async def list_(vpc_id: Optional[str] = None, subnet_id: Optional[str] = None, name: Optional[str] = None,
                    host: Optional[str] = None, c: Caller = Depends(caller)):
        filters = {k: v for k, v in (("vpc_id", vpc_id), ("subnet_id", subnet_id), ("name", name),
                                     ("host", host)) if v is not None}
        return await cp.list(c, kind.collection, filters)

    @app.get(base + "/{resource_id}", tags=[tag], name=f"describe-{kind.prefix}")
    async def describe(resource_id: str, c: Caller = Depends(caller)):
        return await cp.get(c, kind.collection, resource_id)

    if kind.update is not None:
        @app.patch(base + "/{resource_id}", tags=[tag], name=f"modify-{kind.prefix}")
        async def modify(resource_id: str, body: kind.update, c: Caller = Depends(caller)):
            return await cp.update(c, kind.collection, resource_id, body)

    if kind.create is not None:
        @app.delete(base + "/{resource_id}", status_code=204, tags=[tag], name=f"delete-{kind.prefix}")
        async def delete(resource_id: str, c: Caller = Depends(caller)):
            await cp.delete(c, kind.collection, resource_id)
            return Response(status_code=204)
