"""Fuzzing the VPC API from its own OpenAPI document (schemathesis): no request earns a 5xx.

Every operation of ``/openapi.json`` gets a bounded, derandomized batch of requests, sent with a valid
account's bearer token: schemathesis's coverage phase (boundary values, missing and mistyped fields,
other methods, auth variants: ~25 per operation), then 15 generated examples (valid and invalid ones).
The only check is schemathesis's ``not_a_server_error``. In all ~3,000 requests, ~35 s of CPU.

The app runs on a SQLite store in a throwaway directory, opened by the app's lifespan in the event loop
schemathesis runs ASGI apps in (the store is opened when the schema is loaded, and closed when
schemathesis stops the app at exit). The account starts with one resource of every kind, and about
half the generated paths name those, so that describe, modify and delete run their rules on real
records rather than answering 404.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from vswitch.controlplane import resources as r
from vswitch.controlplane.api import build_app
from vswitch.controlplane.service import Caller, ControlPlane
from vswitch.store import open_store

ADMIN_TOKEN = "fuzz-admin-token"
ACCOUNT_TOKEN = "fuzz-account-token"
HEADERS = {"Authorization": f"Bearer {ACCOUNT_TOKEN}"}


SEEDED: dict[str, str] = {}  # collection -> the id of the account's resource of that kind


async def seed(cp: ControlPlane) -> None:
    """An admin, a host, and an account with one resource of every kind."""
    admin = Caller("admin", True, "fuzz-seed", "test")
    await cp.ensure_admin_token(ADMIN_TOKEN)
    await cp.register_host(admin, r.HostCreate(name="h1", underlay_ip="192.168.50.1"))
    account = (await cp.create_account(admin, "fuzz", token=ACCOUNT_TOKEN))["id"]
    me = Caller(account, False, "fuzz-seed", "test")

    async def create(collection: str, **fields) -> dict:
        rec = await cp.create(me, collection, r.KINDS[collection].create(**fields))
        SEEDED[collection] = rec["id"]
        return rec

    dopt = await create("dhcp-options", name="corp")
    vpc = await create("vpcs", cidr_block="10.0.0.0/16", name="fuzz", dhcp_options_id=dopt["id"],
                       amazon_provided_ipv6_cidr_block=True)  # dual stack: the IPv6 rules run too
    subnet = await create("subnets", vpc_id=vpc["id"], cidr_block="10.0.1.0/24",
                          ipv6_cidr_block=vpc["ipv6_cidr_block"].replace("/56", "/64"))
    sg = await create("security-groups", vpc_id=vpc["id"], name="web", ingress=[{"cidr": "0.0.0.0/0"}])
    inst = await create("instances", name="fuzz-1", subnet_id=subnet["id"], host="h1", security_group_ids=[sg["id"]])
    SEEDED["network-interfaces"] = inst["eni_id"]
    await create("network-acls", vpc_id=vpc["id"], name="strict")
    igw = await create("internet-gateways", vpc_id=vpc["id"])
    await create("egress-only-internet-gateways", vpc_id=vpc["id"])
    await create("elastic-ips", instance_id=inst["id"])
    nat_eip = await cp.create(me, "elastic-ips", r.ElasticIpCreate(name="nat"))  # not seeded: the instance's is
    await create("nat-gateways", subnet_id=subnet["id"], allocation_id=nat_eip["id"])
    await create("route-tables", vpc_id=vpc["id"], routes=[{"destination": "0.0.0.0/0", "gateway_id": igw["id"]}])
    tg = await create("target-groups", vpc_id=vpc["id"], name="web", port=80,
                      targets=[{"instance_id": inst["id"], "port": 80}])
    await create("load-balancers", name="web", subnet_ids=[subnet["id"]],
                 listeners=[{"port": 80, "target_group_id": tg["id"]}])
    await create("flow-logs", resource_id=vpc["id"])
    await create("dns-zones", name="corp.internal", vpc_ids=[vpc["id"]])
    assert set(SEEDED) == set(r.KINDS)


cp = ControlPlane(None)  # the store is opened by the app's lifespan, in the loop that serves requests
app = build_app(cp)


@contextlib.asynccontextmanager
async def lifespan(_app):
    workdir = tempfile.mkdtemp(prefix="test-api-fuzz-")
    try:
        async with open_store(f"sqlite://{workdir}/control-plane.db") as store:
            cp.store = store
            await seed(cp)
            yield
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


app.router.lifespan_context = lifespan
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """A resource id in a path is either generated (so almost always unknown) or the account's own
    resource of that kind: so that describe, modify and delete also run their rules on real records."""
    collection = context.operation.path.removeprefix("/v1/").split("/")[0]
    if not path_parameters or "resource_id" not in path_parameters or collection not in SEEDED:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "resource_id": SEEDED[collection]}])


@schema.parametrize()
@settings(max_examples=15, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_is_a_server_error(case):
    case.call_and_validate(headers=HEADERS, checks=[not_a_server_error])
