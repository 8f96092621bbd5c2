"""Flow log delivery through the control plane: POST /v1/flow-logs/<id>/records writes gzip files in the
cloud's S3 layout, GET reads them back; and the proof that they are the cloud's files: flowlogs-reader's
S3 reader, given a fake S3 client over the flow log directory, reads back what was written.

The app is the real one on a SQLite store in a temporary directory (the flow log files go to
``flow-logs`` next to it, the control plane's default for SQLite stores).
"""

from __future__ import annotations

import datetime
import gzip
import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agents import cli
from test_api import ADMIN, serve_store
from vswitch import addresses, config
from vswitch.controlplane.api import build_app
from vswitch.controlplane.service import DEFAULT_FLOW_LOG_DIR, ControlPlane
from vswitch.flowlog import EniIdentity, FlowLogAggregator, FlowLogSpec

WALL = 1_718_000_000.0  # 2024-06-10T06:13:20Z
V5_FORMAT = ("${version} ${account-id} ${interface-id} ${vpc-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} "
             "${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} "
             "${flow-direction} ${traffic-path}")


class Api:
    def __init__(self, client: TestClient, cp: ControlPlane, tmp: Path):
        self.client, self.cp, self.tmp = client, cp, tmp

    def call(self, method: str, path: str, token: str | None, body=None, params=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, path, json=body, params=params, headers=headers)

    def ok(self, method: str, path: str, token: str | None, body=None, params=None, status=None):
        r = self.call(method, path, token, body, params)
        assert r.status_code == (status or {"POST": 201}.get(method, 200)), r.text
        return r.json()

    def refused(self, method: str, path: str, token: str | None, body=None, *, status: int, field=None,
                params=None) -> dict:
        r = self.call(method, path, token, body, params)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        if field is not None:
            assert err["field"] == field, err
        return err

    def account(self, name: str) -> tuple[str, str]:
        rec = self.ok("POST", "/v1/accounts", ADMIN, {"name": name})
        return rec["token"], rec["id"]

    def flow_log(self, token: str, **fields) -> dict:
        vpc = self.ok("POST", "/v1/vpcs", token, {"cidr_block": "10.0.0.0/16"})
        return self.ok("POST", "/v1/flow-logs", token, {"resource_id": vpc["id"], **fields})

    def deliver(self, fl_id: str, records: list[str], start: float = WALL, end: float = WALL + 60,
                host: str = "host-a", token: str = ADMIN) -> dict:
        return self.ok("POST", f"/v1/flow-logs/{fl_id}/records", token,
                       {"records": records, "window_start": start, "window_end": end, "host": host})

    @property
    def flow_log_dir(self) -> Path:
        return self.tmp / "flow-logs"


@pytest.fixture
def api(tmp_path):
    cp = ControlPlane(None)  # the store is opened by the app's lifespan, in the loop that serves requests
    app = build_app(cp)
    serve_store(app, cp, f"sqlite://{tmp_path}/control-plane.db")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, cp, tmp_path)


@pytest.fixture
def alice(api) -> tuple[str, str]:
    return api.account("alice")


def eni_of(fl: dict, account: str) -> EniIdentity:
    return EniIdentity("eni-0123456789abcdef", account, fl["resource_id"], "subnet-0123456789abcdef0",
                       "i-0123456789abcdef0")


def windows(fl: dict, account: str) -> list[tuple[list[str], float, float]]:
    """Two windows of one ENI, as its aggregator writes them: some traffic, then none (NODATA)."""
    a = FlowLogAggregator(FlowLogSpec.from_resource(fl), eni_of(fl, account), now=0.0)
    client, web = addresses.key("10.0.1.4"), addresses.key("10.0.1.10")
    a.add(True, True, 6, client, web, 40512, 80, 3, 180, 2, 1.0)
    a.add(True, True, 6, client, web, 40512, 80, 44, 64_000, 16, 2.0)
    a.add(False, True, 6, web, client, 80, 40512, 2, 120, 18, 1.5)
    a.add(False, False, 17, web, client, 5353, 53, 1, 80, 0, 3.0)
    first = a.flush(60.0, WALL + 60)
    second = a.flush(120.0, WALL + 120)
    return [(first, WALL, WALL + 60), (second, WALL + 60, WALL + 120)]


def read_gzip(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


# --- delivery -------------------------------------------------------------------------------------------
def test_an_admin_delivery_writes_a_gzip_file_in_the_s3_layout_with_a_header(api, alice):
    token, account = alice
    fl = api.flow_log(token)
    records = windows(fl, account)[0][0]
    answer = api.deliver(fl["id"], records)
    key = answer["key"]
    assert answer == {"flow_log_id": fl["id"], "key": key, "records": len(records)}
    assert re.fullmatch(rf"AWSLogs/{account}/vpcflowlogs/lab-1/2024/06/10/"
                        rf"{account}_vpcflowlogs_lab-1_{fl['id']}_20240610T0614Z_[0-9a-f]{{8}}\.log\.gz", key), key
    path = api.flow_log_dir / key
    assert read_gzip(path) == ["version account-id interface-id srcaddr dstaddr srcport dstport protocol "
                               "packets bytes start end action log-status", *records]
    # Written whole under another name, then renamed: nothing else is left in the directory.
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    # The same delivery again (its answer was lost): the same file, not a second copy.
    assert api.deliver(fl["id"], records)["key"] == key
    assert len(list(api.flow_log_dir.rglob("*.log.gz"))) == 1
    assert api.deliver(fl["id"], records, host="host-b")["key"] != key


def test_delivery_is_admin_only_and_for_flow_logs_that_exist(api, alice):
    token, _ = alice
    fl = api.flow_log(token)
    body = {"records": [f"2 a eni-1 - - - - - - - 1 2 - NODATA"], "window_start": 1.0, "window_end": 2.0,
            "host": "host-a"}
    api.refused("POST", f"/v1/flow-logs/{fl['id']}/records", token, body, status=403)  # even its owner
    api.refused("POST", "/v1/flow-logs/fl-0123456789abcdef0/records", ADMIN, body, status=404)
    api.refused("POST", "/v1/flow-logs/vpc-0123456789abcdef0/records", ADMIN, body, status=404)
    api.refused("POST", f"/v1/flow-logs/{fl['id']}/records", None, body, status=401)
    assert not api.flow_log_dir.exists()


@pytest.mark.parametrize("change, field", [
    ({"colour": "red"}, "colour"),
    ({"records": []}, "records"),
    ({"records": ["2 a eni-1 - - - - - - - 1 2 - NODATA\n2"]}, "records[0]"),
    ({"records": ["2  a eni-1 - - - - - - - 1 2 - NODATA"]}, "records[0]"),
    ({"records": ["2 a eni-1 - - - - - - - 1 2 - NODATA", "2 a eni-1"]}, "records[1]"),  # the service counts
    ({"window_end": 0.5}, "body"),
    ({"window_start": -1}, "window_start"),
    ({"window_end": float("1e300")}, "window_end"),
    ({"host": "Host A"}, "host"),
])
def test_an_invalid_delivery_is_a_422_naming_the_field(api, alice, change, field):
    token, _ = alice
    fl = api.flow_log(token)
    body = {"records": ["2 a eni-1 - - - - - - - 1 2 - NODATA"], "window_start": 1.0, "window_end": 2.0,
            "host": "host-a", **change}
    err = api.refused("POST", f"/v1/flow-logs/{fl['id']}/records", ADMIN, body, status=422)
    assert err["field"] == field or err["field"].startswith(field), err


def test_deliveries_and_their_refusals_are_audited(api, alice):
    token, _ = alice
    fl = api.flow_log(token)
    api.deliver(fl["id"], ["2 a eni-1 - - - - - - - 1 2 - NODATA"])
    api.refused("POST", f"/v1/flow-logs/{fl['id']}/records", token,
                {"records": ["x"], "window_start": 1.0, "window_end": 2.0, "host": "host-a"}, status=403)
    audit = [e for e in api.ok("GET", "/v1/audit", ADMIN) if e["resource"] == fl["id"]]
    assert [(e["action"], e["status"]) for e in audit] == [
        ("CreateFlowLog", 201), ("PutFlowLogRecords", 201), ("PutFlowLogRecords", 403)]
    assert "1 records from host-a" in audit[1]["message"]


# --- reading back ----------------------------------------------------------------------------------------
def test_the_owner_reads_the_records_back_and_nobody_else_does(api, alice):
    token, account = alice
    fl = api.flow_log(token)
    (first, s1, e1), (second, s2, e2) = windows(fl, account)
    api.deliver(fl["id"], first, s1, e1)
    api.deliver(fl["id"], second, s2, e2)
    got = api.ok("GET", f"/v1/flow-logs/{fl['id']}/records", token)
    assert got["flow_log_id"] == fl["id"]
    assert got["fields"] == list(FlowLogSpec.from_resource(fl).fields)
    assert [" ".join(r) for r in got["records"]] == first + second  # oldest first
    assert got["records"][-1][-1] == "NODATA"

    # start/end pick the records whose [start, end] overlaps; limit the newest.
    after = api.ok("GET", f"/v1/flow-logs/{fl['id']}/records", token, params={"start": WALL + 61})
    assert [" ".join(r) for r in after["records"]] == second
    before = api.ok("GET", f"/v1/flow-logs/{fl['id']}/records", token, params={"end": WALL + 2})
    assert [" ".join(r) for r in before["records"]] == first[:2]  # the rejected one started at WALL + 3
    assert api.ok("GET", f"/v1/flow-logs/{fl['id']}/records", token, params={"limit": 1})["records"] == \
        [second[0].split(" ")]

    bob, _ = api.account("bob")
    api.refused("GET", f"/v1/flow-logs/{fl['id']}/records", bob, status=404)
    api.refused("GET", f"/v1/flow-logs/{fl['id']}/records", ADMIN, status=404)  # the admin owns no flow log
    api.refused("GET", "/v1/flow-logs/fl-0123456789abcdef0/records", token, status=404)
    api.refused("GET", f"/v1/flow-logs/{fl['id']}/records", token, params={"limit": 0}, status=422)
    # The generated routes of the flow log itself are unaffected.
    assert api.ok("GET", f"/v1/flow-logs/{fl['id']}", token)["id"] == fl["id"]


def test_a_flow_log_without_records_reads_empty(api, alice):
    token, _ = alice
    fl = api.flow_log(token)
    assert api.ok("GET", f"/v1/flow-logs/{fl['id']}/records", token)["records"] == []


def test_the_flow_log_directory_is_configurable_with_defaults(tmp_path):
    assert ControlPlane(None, flow_log_dir=str(tmp_path / "x")).flow_log_dir == str(tmp_path / "x")
    assert ControlPlane(None).flow_log_dir == DEFAULT_FLOW_LOG_DIR
    cfg = config.ControlPlaneConfig(unix_socket="/tmp/s", admin_token_file="/tmp/t", flow_log_dir="/tmp/fl")
    assert cfg.flow_log_dir == "/tmp/fl"


def test_the_cli_prints_the_header_then_the_records(api, alice, monkeypatch, capsys):
    token, account = alice
    fl = api.flow_log(token)
    records, start, end = windows(fl, account)[0]
    api.deliver(fl["id"], records, start, end)

    class Client:
        def call(self, method, path, body=None, params=None):
            return api.ok(method, path, token, body, params)

    monkeypatch.setattr(cli, "_api", lambda args: Client())
    # main() makes SIGPIPE kill the process (for `vpc ... | head`): not the test run's process.
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    assert cli.main(["flow-logs", fl["id"], "--start", str(WALL)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [" ".join(FlowLogSpec.from_resource(fl).fields), *records]


# --- the proof: the cloud's reader reads our files ----------------------------------------------------------
class LocalS3:
    """The part of boto3's S3 client that flowlogs_reader.S3FlowLogsReader uses, over a local directory:
    list_objects_v2 (with Delimiter, for CommonPrefixes), its paginator, and get_object."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[tuple] = []

    def _keys(self, prefix: str) -> list[str]:
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))

    def list_objects_v2(self, Bucket: str, Prefix: str = "", Delimiter: str | None = None, **_) -> dict:
        self.calls.append(("list_objects_v2", Prefix, Delimiter))
        keys, prefixes = self._keys(Prefix), set()
        if Delimiter:
            rest = [k[len(Prefix):] for k in keys]
            prefixes = {Prefix + r.split(Delimiter, 1)[0] + Delimiter for r in rest if Delimiter in r}
            keys = [Prefix + r for r in rest if Delimiter not in r]
        return {"Contents": [{"Key": k, "Size": (self.root / k).stat().st_size} for k in keys],
                "CommonPrefixes": [{"Prefix": p} for p in sorted(prefixes)], "KeyCount": len(keys) + len(prefixes)}

    def get_paginator(self, operation: str):
        assert operation == "list_objects_v2", operation
        client = self

        class Paginator:
            def paginate(self, **kwargs):
                yield client.list_objects_v2(**kwargs)

        return Paginator()

    def get_object(self, Bucket: str, Key: str) -> dict:
        self.calls.append(("get_object", Key))
        data = (self.root / Key).read_bytes()
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}


def read_with_flowlogs_reader(root: Path) -> list:
    flowlogs_reader = pytest.importorskip("flowlogs_reader")
    day = datetime.datetime(2024, 6, 10)
    reader = flowlogs_reader.S3FlowLogsReader("flow-logs", start_time=day, end_time=day + datetime.timedelta(days=1),
                                              boto_client=LocalS3(root), raise_on_error=True)
    records = list(reader)
    assert reader.skipped_records == 0
    return records


def test_flowlogs_reader_reads_default_format_records_back(api, alice):
    token, account = alice
    fl = api.flow_log(token)
    for records, start, end in windows(fl, account):
        api.deliver(fl["id"], records, start, end)
    got = read_with_flowlogs_reader(api.flow_log_dir)
    eni = eni_of(fl, account).eni_id
    assert [(r.version, r.account_id, r.interface_id, r.srcaddr, r.dstaddr, r.srcport, r.dstport, r.protocol,
             r.packets, r.bytes, r.action, r.log_status) for r in got] == [
        (2, account, eni, "10.0.1.4", "10.0.1.10", 40512, 80, 6, 47, 64_180, "ACCEPT", "OK"),
        (2, account, eni, "10.0.1.10", "10.0.1.4", 80, 40512, 6, 2, 120, "ACCEPT", "OK"),
        (2, account, eni, "10.0.1.10", "10.0.1.4", 5353, 53, 17, 1, 80, "REJECT", "OK"),
        (2, account, eni, None, None, None, None, None, None, None, None, "NODATA")]
    utc = datetime.datetime.utcfromtimestamp
    assert (got[0].start, got[0].end) == (utc(WALL + 1), utc(WALL + 2))
    assert (got[-1].start, got[-1].end) == (utc(WALL + 60), utc(WALL + 120))


def test_flowlogs_reader_reads_v5_fields_back(api, alice):
    token, account = alice
    fl = api.flow_log(token, log_format=V5_FORMAT, traffic_type="ALL", max_aggregation_interval=60)
    for records, start, end in windows(fl, account):
        api.deliver(fl["id"], records, start, end)
    got = read_with_flowlogs_reader(api.flow_log_dir)
    assert [(r.version, r.vpc_id, r.srcaddr, r.packets, r.tcp_flags, r.flow_direction, r.traffic_path,
             r.action, r.log_status) for r in got] == [
        (5, fl["resource_id"], "10.0.1.4", 47, 18, "egress", 1, "ACCEPT", "OK"),
        (5, fl["resource_id"], "10.0.1.10", 2, 18, "ingress", None, "ACCEPT", "OK"),
        (5, fl["resource_id"], "10.0.1.10", 1, 0, "ingress", None, "REJECT", "OK"),
        (5, fl["resource_id"], None, None, None, None, None, None, "NODATA")]
