"""Prometheus metrics: every daemon serves its counters on ``metrics = "HOST:PORT"`` (its config).

Nothing here runs per packet. The collectors below read, at scrape time, the plain ints and lists the
daemons already keep (``Eni.stats``, the drop counter lists, ``ConnTrack.limit_hits``…), from the
metrics server's own thread (``prometheus_client.start_http_server``). They never await and never take
a lock: a counter read while the event loop adds to it is off by that one packet, which is what any
scrape is; every dict the loop may grow is iterated over a ``list(...)`` snapshot (no "dictionary
changed size during iteration"), and a histogram is copied once so its buckets, count and sum agree.

The host agent (labels: ``eni`` is the ENI id, ``instance`` its instance, ``direction`` tx = sent by the
instance, rx = delivered to it; ``path`` egress/ingress/resolver; ``reason`` a ``Drop`` label)::

    vpc_eni_packets_total{eni,instance,direction}   Eni.stats (segments: a TSO super-packet counts as
    vpc_eni_bytes_total{eni,instance,direction}       the packets it carries on the wire)
    vpc_eni_drops_total{eni,reason}                 Eni.drops (only reasons that happened: N ENIs × 35)
    vpc_drops_total{path,reason}                    EgressPath/IngressPath/VpcResolver.drops (every reason)
    vpc_conntrack_entries{eni}, vpc_conntrack_limit{eni}, vpc_conntrack_limit_hits_total{eni}
    vpc_mapping_cache_entries                       MappingCache.size()
    vpc_mapping_cache_hits_total{path="egress"}     EgressPath.mapping_hits: remote lookups answered
    vpc_mapping_cache_misses_total{path}            derived, no counter of its own: egress misses are
                                                    to_edge + drops[no_mapping_no_edge] (each miss is one or
                                                    the other); ingress ones (unknown inner sources) are
                                                    MappingCache.misses minus those
    vpc_mapping_push_lag_seconds (histogram)        MappingCache.push_lag: now - the daemon's "ts" stamp
    vpc_resolver_queries_total{result}              answered, forwarded, refused, rate_limited
    …and vpc_enis, vpc_via_edge_packets_total{direction}, vpc_errors_total, vpc_ready.

The edge: ``vpc_edge_relayed_packets_total``, ``vpc_edge_internet_packets_total{direction,family}``,
``vpc_drops_total{path="relay"|"internet"}``; the mapping daemon: ``vpc_mapping_entries``,
``vpc_mapping_subscribers``, ``vpc_mapping_pushes_total``; a Hyperplane node:
``vpc_hyperplane_flows{kind="nat"|"nlb"}``, ``vpc_hyperplane_refusals_total{kind,reason}``; the control
plane: ``vpc_api_requests_total{method,route,status}`` and ``vpc_api_request_duration_seconds{method,route}``
(``vswitch.controlplane.api.ApiStats``). Every daemon: ``vpc_info{role,name}`` and the process's own
``process_*`` metrics.

``scrape`` and ``summary`` read an endpoint back (``vpc status``), from inside a network namespace if
it has to.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from . import config, logs, netns
from .drops import Drop

REASONS = tuple(d.label for d in Drop)  # by index: a drop counter list's labels


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _drops(family: CounterMetricFamily, path: str, counters: list) -> None:
    for reason, value in zip(REASONS, list(counters)):
        family.add_metric([path, reason], value)


def _histogram(name: str, doc: str, histograms) -> HistogramMetricFamily:
    """``histograms``: (label names, [(label values, vswitch.histogram.Histogram)])."""
    names, items = histograms
    family = HistogramMetricFamily(name, doc, labels=list(names))
    for values, h in items:
        buckets, _, total = h.snapshot()
        family.add_metric(list(values), buckets, total)
    return family


def _mapping_cache(cache, client) -> list:
    """What a host agent and the edge share: their mapping cache and its connection to the daemon."""
    entries = _gauge("vpc_mapping_cache_entries", "Mappings (VPC, address) held by the cache")
    entries.add_metric([], cache.size())
    lag = _histogram("vpc_mapping_push_lag_seconds",
                     "From the mapping daemon's push (its wall clock) to the change applied here",
                     ((), [((), cache.push_lag)]))
    negative = _counter("vpc_mapping_push_lag_negative_total",
                        "Pushes stamped later than they arrived (clocks disagree), observed as 0 s")
    negative.add_metric([], cache.push_lag_negative)
    answers = _counter("vpc_mapping_query_answers_total", "Answers from the daemon that filled a miss")
    answers.add_metric([], cache.hits_by_query)
    updates = _counter("vpc_mapping_updates_total", "Snapshots and changes applied to the cache")
    updates.add_metric([], cache.updates)
    connected = _gauge("vpc_mapping_connected", "1 while connected to the mapping daemon")
    connected.add_metric([], 1 if client.connected else 0)
    return [entries, lag, negative, answers, updates, connected]


class _Base(Collector):
    role = ""

    def __init__(self, component, name: str = ""):
        self.c = component
        self.name = name

    def collect(self):
        info = _gauge("vpc_info", "The daemon: its role and name", "role", "name")
        info.add_metric([self.role, self.name], 1)
        yield info
        yield from self.families()

    def families(self):
        return ()


class HostAgentCollector(_Base):
    role = "host-agent"

    def families(self):
        a = self.c
        packets = _counter("vpc_eni_packets_total", "Packets through an ENI (tx: sent by the instance)",
                           "eni", "instance", "direction")
        octets = _counter("vpc_eni_bytes_total", "Bytes (IP) through an ENI", "eni", "instance", "direction")
        eni_drops = _counter("vpc_eni_drops_total", "Packets of an ENI dropped, by reason (reasons seen)",
                             "eni", "reason")
        ct_entries = _gauge("vpc_conntrack_entries", "Tracked flows of an ENI (expired ones not yet swept too)", "eni")
        ct_limit = _gauge("vpc_conntrack_limit", "The size of an ENI's flow table", "eni")
        ct_hits = _counter("vpc_conntrack_limit_hits_total", "New flows refused: the ENI's table was full", "eni")
        ports = list(a.ports.values())
        for port in ports:
            e = port.eni
            tx_p, tx_b, rx_p, rx_b = list(e.stats)
            packets.add_metric([e.id, e.instance, "tx"], tx_p)
            packets.add_metric([e.id, e.instance, "rx"], rx_p)
            octets.add_metric([e.id, e.instance, "tx"], tx_b)
            octets.add_metric([e.id, e.instance, "rx"], rx_b)
            for reason, value in zip(REASONS, list(e.drops)):
                if value:
                    eni_drops.add_metric([e.id, reason], value)
            ct = e.ct
            ct_entries.add_metric([e.id], len(ct))
            ct_limit.add_metric([e.id], ct.max_flows)
            ct_hits.add_metric([e.id], ct.limit_hits)
        yield from (packets, octets, eni_drops, ct_entries, ct_limit, ct_hits)

        drops = _counter("vpc_drops_total", "Packets dropped, by path and reason", "path", "reason")
        _drops(drops, "egress", a.egress.drops)
        _drops(drops, "ingress", a.ingress.drops)
        _drops(drops, "resolver", a.resolver.drops)
        yield drops

        enis = _gauge("vpc_enis", "ENIs attached on this host")
        enis.add_metric([], len(ports))
        pending = _gauge("vpc_enis_pending", "ENIs of the desired state not attached yet")
        pending.add_metric([], len(a.pending))
        ready = _gauge("vpc_ready", "1 once the daemon serves")
        ready.add_metric([], 1 if a.ready else 0)
        errors = _counter("vpc_errors_total", "Unexpected exceptions caught on the data path (should stay 0)")
        errors.add_metric([], a.errors)
        yield from (enis, pending, ready, errors)

        egress, cache = a.egress, a.cache
        hits = _counter("vpc_mapping_cache_hits_total", "Lookups the mapping cache answered", "path")
        hits.add_metric(["egress"], egress.mapping_hits)
        misses = _counter("vpc_mapping_cache_misses_total", "Lookups the mapping cache could not answer", "path")
        egress_misses = egress.to_edge + egress.drops[Drop.NO_MAPPING_NO_EDGE]
        misses.add_metric(["egress"], egress_misses)
        misses.add_metric(["ingress"], max(cache.misses - egress_misses, 0))
        yield from (hits, misses, *_mapping_cache(cache, a.mapping))

        via = _counter("vpc_via_edge_packets_total", "Packets relayed through the edge (out: on a mapping miss)",
                       "direction")
        via.add_metric(["out"], egress.to_edge)
        via.add_metric(["in"], a.ingress.from_edge)
        held = _counter("vpc_held_for_mapping_total", "Packets held until their source's mapping arrived")
        held.add_metric([], a.ingress.held_total)
        coalesced = _counter("vpc_udp_coalesced_packets_total", "Small UDP packets written to an ENI together")
        coalesced.add_metric([], a.coalescer.coalesced)
        yield from (via, held, coalesced)

        r = a.resolver
        counters, rdrops = r.counters, r.drops
        queries = _counter("vpc_resolver_queries_total", "Packets to the VPC resolver, by what became of them",
                           "result")
        queries.add_metric(["answered"], counters["answered_local"])
        queries.add_metric(["forwarded"], counters["forwarded"])
        queries.add_metric(["refused"], rdrops[Drop.DNS_REFUSED])
        queries.add_metric(["rate_limited"], rdrops[Drop.DNS_RATE_LIMITED])
        upstream = _counter("vpc_resolver_upstream_answers_total", "Answers from the upstream resolver relayed")
        upstream.add_metric([], counters["upstream_answers"])
        nxdomain = _counter("vpc_resolver_nxdomain_total", "Answers that were NXDOMAIN")
        nxdomain.add_metric([], counters["nxdomain"])
        yield from (queries, upstream, nxdomain)


class EdgeCollector(_Base):
    role = "edge"

    def families(self):
        e = self.c
        relayed = _counter("vpc_edge_relayed_packets_total", "Datagrams relayed to the host of their destination")
        relayed.add_metric([], e.relay.relayed)
        internet = _counter("vpc_edge_internet_packets_total", "Packets through the internet gateway",
                            "direction", "family")
        c = dict(e.igw.counters)
        for direction, family, key in (("out", "ipv4", "out"), ("in", "ipv4", "in"),
                                       ("out", "ipv6", "out6"), ("in", "ipv6", "in6")):
            internet.add_metric([direction, family], c.get(key, 0))
        too_big = _counter("vpc_edge_internet_too_big_total", "Packets over the internet MTU, answered with ICMP")
        too_big.add_metric([], c.get("too_big", 0))
        drops = _counter("vpc_drops_total", "Packets dropped, by path and reason", "path", "reason")
        _drops(drops, "relay", e.relay.drops)
        _drops(drops, "internet", e.internet_drops)
        public = _gauge("vpc_edge_public_addresses", "Elastic IPs the internet gateway translates")
        public.add_metric([], len(e.igw.by_public))
        yield from (relayed, internet, too_big, drops, public, *_mapping_cache(e.cache, e.mapping))


class MappingDaemonCollector(_Base):
    role = "mapping-daemon"

    def families(self):
        d = self.c
        tables = list(d.service.table.values())
        entries = _gauge("vpc_mapping_entries", "Mappings (VPC, address) in the authoritative table")
        entries.add_metric([], sum(len(t) for t in tables))
        vpcs = _gauge("vpc_mapping_vpcs", "VPCs with mappings")
        vpcs.add_metric([], len(tables))
        subscribers = _gauge("vpc_mapping_subscribers", "Connected subscribers (host agents, the edge)")
        subscribers.add_metric([], len(d.service.subscribers))
        pushes = _counter("vpc_mapping_pushes_total", "Changes pushed, one per subscriber that follows the VPC")
        pushes.add_metric([], d.pushed)
        errors = _counter("vpc_mapping_protocol_errors_total", "Messages refused as malformed")
        errors.add_metric([], d.protocol_errors)
        yield from (entries, vpcs, subscribers, pushes, errors)


class HyperplaneCollector(_Base):
    role = "hyperplane"

    def families(self):
        a = self.c
        core = a.core
        nats, lbs = list(core.nats.values()), list(core.lbs.values())
        flows = _gauge("vpc_hyperplane_flows", "Flows this node holds (primary or copy)", "kind")
        flows.add_metric(["nat"], sum(len(n.core) for n in nats))
        flows.add_metric(["nlb"], sum(len(li) for lb in lbs for li in list(lb.listeners.values())))
        resources = _gauge("vpc_hyperplane_resources", "NAT gateways and load balancers known", "kind")
        resources.add_metric(["nat"], len(nats))
        resources.add_metric(["nlb"], len(lbs))
        refusals = _counter("vpc_hyperplane_refusals_total", "Flows or packets refused, by reason", "kind", "reason")
        for kind, table in (("nat", core.nat_refusals), ("nlb", core.nlb_refusals)):
            for reason, value in list(table.items()):
                refusals.add_metric([kind, reason], value)
        events = _counter("vpc_hyperplane_events_total", "Packets translated and balanced, and other events",
                          "event")
        for event, value in list(core.counters.items()):
            events.add_metric([event], value)
        drops = _counter("vpc_drops_total", "Packets dropped, by path and reason", "path", "reason")
        _drops(drops, "hyperplane", core.drops)
        alive = _gauge("vpc_hyperplane_nodes_alive", "Nodes of the fleet this node hears")
        alive.add_metric([], len(a.fleet.alive))
        records = _counter("vpc_hyperplane_replicated_records_total", "Flow records copied to other owners")
        records.add_metric([], a.records_out)
        errors = _counter("vpc_errors_total", "Unexpected exceptions caught on the data path (should stay 0)")
        errors.add_metric([], a.errors)
        yield from (flows, resources, refusals, events, drops, alive, records, errors)


class ControlPlaneCollector(_Base):
    role = "control-plane"

    def families(self):
        stats = getattr(self.c, "api_stats", None)
        if stats is None:
            return
        requests = _counter("vpc_api_requests_total", "API requests by method, route template and status",
                            "method", "route", "status")
        for (method, route, status), value in list(stats.requests.items()):
            requests.add_metric([method, route, str(status)], value)
        yield requests
        yield _histogram("vpc_api_request_duration_seconds", "API request durations (long polls included)",
                         (("method", "route"), list(stats.durations.items())))


# By the component's class (agents/*.py), unless it names its role with ``metrics_role``.
COLLECTORS = {"HostAgent": HostAgentCollector, "EdgeAgent": EdgeCollector, "MappingDaemon": MappingDaemonCollector,
              "HyperplaneAgent": HyperplaneCollector, "ControlPlane": ControlPlaneCollector}
COLLECTORS.update({c.role: c for c in COLLECTORS.values()})


def registry_for(component, name: str = "", process: bool = True) -> CollectorRegistry:
    role = getattr(component, "metrics_role", None) or type(component).__name__
    try:
        collector = COLLECTORS[role]
    except KeyError:
        raise ValueError(f"no metrics for a {role}") from None
    registry = CollectorRegistry()
    registry.register(collector(component, name))
    if process:
        ProcessCollector(registry=registry)
    return registry


class _Server(ThreadingWSGIServer):
    """``prometheus_client.start_http_server``'s server, minus the name lookup: ``HTTPServer.server_bind``
    asks DNS for the address's name (``socket.getfqdn``), which blocked the lab's edge — whose namespace
    routes to a resolver that never answers — inside ``daemon.started``, on its event loop, until the
    lookup timed out (its metrics were never served while the lab test waited)."""

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def start(endpoint: str, registry: CollectorRegistry):
    """Serve ``registry`` on HOST:PORT from a daemon thread (one more per scrape); the server."""
    host, port = config.split_endpoint(endpoint)
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    server = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def serve(cfg, component):
    """Serve ``component``'s metrics on ``cfg.metrics`` (HOST:PORT), in a thread; the server, or None when
    not configured. A port that cannot be bound is logged, not fatal: the data path matters more."""
    if not getattr(cfg, "metrics", None) or component is None:
        return None
    log = logs.get("metrics")
    try:
        server = start(cfg.metrics, registry_for(component, cfg.name))
    except (OSError, ValueError) as e:
        log.error("metrics not served", endpoint=cfg.metrics, error=str(e))
        return None
    log.info("metrics served", endpoint=cfg.metrics)
    return server


# --- reading them back (vpc status, tests) --------------------------------------------------------------
def scrape(endpoint: str, netns_name: str | None = None, timeout: float = 2.0) -> dict[str, list]:
    """GET /metrics from HOST:PORT, reached from network namespace ``netns_name`` (blocking; any thread:
    only the socket is made inside the namespace, the thread goes back at once). Returns every sample
    by name: ``{"vpc_eni_packets_total": [({"eni": …, …}, 12.0), …]}``."""
    host, port = config.split_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if netns_name:
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns_name}") as target:
            netns.setns_fd(target.fileno())
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            finally:
                netns.setns_fd(home.fileno())
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"{endpoint}: HTTP {response.status}")
    finally:
        sock.close()
    samples: dict[str, list] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: dict, metric: str, /, **match) -> float:
    """The sum of ``metric``'s samples whose labels include ``match``."""
    return sum(v for labels, v in samples.get(metric, ()) if all(labels.get(k) == w for k, w in match.items()))


def summary(samples: dict) -> dict:
    """A few numbers per role, for ``vpc status``."""
    role = next((labels.get("role") for labels, _ in samples.get("vpc_info", ())), None)
    t = lambda name, **m: int(total(samples, name, **m))  # noqa: E731
    if role == "host-agent":
        lag_n = total(samples, "vpc_mapping_push_lag_seconds_count")
        lag = total(samples, "vpc_mapping_push_lag_seconds_sum") / lag_n if lag_n else None
        return {"role": role, "packets_tx": t("vpc_eni_packets_total", direction="tx"),
                "packets_rx": t("vpc_eni_packets_total", direction="rx"),
                "bytes_tx": t("vpc_eni_bytes_total", direction="tx"),
                "bytes_rx": t("vpc_eni_bytes_total", direction="rx"), "drops": t("vpc_drops_total"),
                "conntrack_entries": t("vpc_conntrack_entries"),
                "conntrack_limit_hits": t("vpc_conntrack_limit_hits_total"),
                "mapping_hits": t("vpc_mapping_cache_hits_total"), "mapping_misses": t("vpc_mapping_cache_misses_total"),
                "push_lag_ms": round(lag * 1000, 2) if lag is not None else None,
                "resolver_queries": t("vpc_resolver_queries_total")}
    if role == "edge":
        return {"role": role, "relayed": t("vpc_edge_relayed_packets_total"),
                "internet_out": t("vpc_edge_internet_packets_total", direction="out"),
                "internet_in": t("vpc_edge_internet_packets_total", direction="in"), "drops": t("vpc_drops_total"),
                "mapping_entries": t("vpc_mapping_cache_entries")}
    if role == "mapping-daemon":
        return {"role": role, "entries": t("vpc_mapping_entries"), "subscribers": t("vpc_mapping_subscribers"),
                "pushes": t("vpc_mapping_pushes_total")}
    if role == "hyperplane":
        return {"role": role, "nat_flows": t("vpc_hyperplane_flows", kind="nat"),
                "nlb_flows": t("vpc_hyperplane_flows", kind="nlb"),
                "refusals": t("vpc_hyperplane_refusals_total"), "drops": t("vpc_drops_total")}
    if role == "control-plane":
        by_class: dict[str, int] = {}
        for labels, v in samples.get("vpc_api_requests_total", ()):
            k = labels.get("status", "?")[:1] + "xx"
            by_class[k] = by_class.get(k, 0) + int(v)
        return {"role": role, "api_requests": sum(by_class.values()), **{f"api_{k}": v for k, v in sorted(by_class.items())}}
    return {"role": role}


def scrape_summary(endpoint: str, netns_name: str | None = None, timeout: float = 2.0) -> dict:
    """``summary`` of one endpoint, with how long the scrape took; ``{"error": …}`` if it did not answer."""
    start = time.perf_counter()
    try:
        samples = scrape(endpoint, netns_name, timeout)
    except (OSError, ValueError, http.client.HTTPException) as e:
        return {"endpoint": endpoint, "error": str(e) or type(e).__name__}
    return {"endpoint": endpoint, **summary(samples), "scrape_ms": round((time.perf_counter() - start) * 1000, 1)}
