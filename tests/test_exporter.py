"""The /metrics endpoint over real HTTP(S): catalogue-driven output that promtool accepts,
TLS and basic auth from an exporter-toolkit web config, and the cardinality budget."""

from __future__ import annotations

import base64
import http.client
import os
import re
import ssl
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailpulse.collectors.host import HostSample
from mailpulse.exporters.prometheus import serve_metrics
from mailpulse.exporters.web import WebConfigError, WebServer, load_web_config

from mailpulse import catalogue
from mailpulse.domains import PROVIDER_DOMAINS, DomainGroups
from mailpulse.events import DeliveryEvent
from mailpulse.series import Accounting, Series, SourceStatus, TopDomains
from mailpulse.state import State
from tests.conftest import require_programs

COMMON = {"node": "n1", "role": "bulk"}
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def event(domain: str, status: str = "sent", reason: str = "delivered", dsn: str = "2.0.0"):
    return DeliveryEvent(
        time=0.0,
        node="n1",
        instance="postfix",
        program="smtp",
        queue_id="4ABCDEF",
        recipient=f"u@{domain}",
        domain=domain,
        relay="mx.example.net[192.0.2.1]:25",
        status=status,
        dsn=dsn,
        reply_code=dsn[0] + "50",
        reply_text="ok",
        reason=reason,
        scope="recipient",
        hard=False,
        delay=1.5,
        delays=(0.1, 0.2, 0.3, 0.9),
        size=2048,
    )


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    s = State(tmp_path / "state.sqlite")
    yield s
    s.close()


def serve(state: State, web_config: Path | None = None, series: Series | None = None) -> WebServer:
    server = WebServer(("127.0.0.1", 0), load_web_config(web_config), COMMON)
    serve_metrics(server, series or Series(state), COMMON)
    return server.start()


def get(url: str, auth: tuple[str, str] | None = None, ctx: ssl.SSLContext | None = None):  # type: ignore[no-untyped-def]
    req = urllib.request.Request(url)
    if auth:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_follow_the_catalogue_and_promtool_accepts_them(state: State) -> None:
    require_programs("promtool")
    acc = Accounting(state, TopDomains(DomainGroups(), 10, 100))
    fed = [event("gmail.com")] * 3 + [event("example.org", "bounced", "userunknown", "5.1.1")]
    fed += [event("yahoo.com", "deferred", "speeding", "4.7.0")] * 2
    for ev in fed:
        acc.apply(ev)
    state.commit()
    from mailpulse.collectors.host import HostSampler

    sample = HostSampler([]).sample()
    server = serve(state, series=Series(state, host=lambda: (sample, SourceStatus(True))))
    try:
        status, body = get(f"http://127.0.0.1:{server.address[1]}/metrics")
    finally:
        server.stop()
    assert status == 200
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr

    samples = parse_exposition(body)
    base = {("node", "n1"), ("role", "bulk"), ("instance", "postfix")}

    def deliveries(status: str, reason: str, group: str, dsn_class: str) -> float:
        labels = base | {
            ("status", status),
            ("reason", reason),
            ("domain_group", group),
            ("dsn_class", dsn_class),
        }
        return samples[("mailpulse_deliveries_total", frozenset(labels))]

    assert deliveries("sent", "delivered", "gmail", "2xx") == 3
    assert deliveries("bounced", "userunknown", "other", "5xx") == 1
    assert deliveries("deferred", "speeding", "yahoo", "4xx") == 2
    # Delay histograms only for final statuses: 3 sent + 1 bounced, none for the 2 deferrals.
    total_counts = [
        v
        for (name, labels), v in samples.items()
        if name == "mailpulse_delivery_delay_seconds_count" and ("stage", "total") in labels
    ]
    assert sorted(total_counts) == [1, 3]
    # Every catalogue metric is announced, each with its HELP and TYPE.
    for m in catalogue.CATALOGUE:
        assert f"# TYPE {m.name} {m.type}" in body
    cpus = samples[("mailpulse_host_cpus", frozenset({("node", "n1"), ("role", "bulk")}))]
    assert cpus == os.cpu_count()  # the interpreter's own count, not psutil's


def test_landing_page_and_unknown_paths(state: State) -> None:
    server = serve(state)
    try:
        status, body = get(f"http://127.0.0.1:{server.address[1]}/")
        assert status == 200 and 'href="/metrics"' in body and "n1" in body
        status, _ = get(f"http://127.0.0.1:{server.address[1]}/nothing-here")
        assert status == 404
    finally:
        server.stop()


def make_cert(dir: Path) -> tuple[Path, Path]:
    require_programs("openssl")
    cert, key = dir / "cert.pem", dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def write_web_config(path: Path, tls: bool, password: str | None) -> None:
    import bcrypt

    lines = []
    if tls:
        lines += ["tls_server_config:", "  cert_file: cert.pem", "  key_file: key.pem"]
    if password:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines += ["basic_auth_users:", f"  prom: '{hashed}'"]
    path.write_text("\n".join(lines) + "\n")


def test_tls_and_basic_auth_refuse_plain_http_and_wrong_passwords(
    state: State, tmp_path: Path
) -> None:
    cert, _ = make_cert(tmp_path)
    web = tmp_path / "web.yml"
    write_web_config(web, tls=True, password="s3cret")
    server = serve(state, web)
    port = server.address[1]
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        assert get(f"https://127.0.0.1:{port}/metrics", ("prom", "s3cret"), ctx)[0] == 200
        # Bad input: a wrong password, an unknown user, no credentials, a garbled header.
        assert get(f"https://127.0.0.1:{port}/metrics", ("prom", "wrong"), ctx)[0] == 401
        assert get(f"https://127.0.0.1:{port}/metrics", ("root", "s3cret"), ctx)[0] == 401
        assert get(f"https://127.0.0.1:{port}/metrics", None, ctx)[0] == 401
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/metrics", headers={"Authorization": "Basic !!notbase64"})
        assert conn.getresponse().status == 401
        conn.close()
        # Bad input: plain HTTP to the TLS port never gets the metrics.
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/metrics")
            resp = plain.getresponse()
            assert resp.status != 200
            raise http.client.HTTPException(f"refused with {resp.status}")
        plain.close()
        # And the server still answers afterwards.
        assert get(f"https://127.0.0.1:{port}/metrics", ("prom", "s3cret"), ctx)[0] == 200
    finally:
        server.stop()


def test_basic_auth_without_tls(state: State, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    write_web_config(web, tls=False, password="pw")
    server = serve(state, web)
    try:
        url = f"http://127.0.0.1:{server.address[1]}/metrics"
        assert get(url, ("prom", "wrong"))[0] == 401
        assert get(url, ("prom", "pw"))[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    "text, key",
    [
        ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.pem\n", "cert_file"),
        ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom"),
        ("tls_server_config:\n  certfile: x\n", "tls_server_config.certfile"),
        ("listen: 1\n", "listen"),
        ("tls_server_config: [\n", "not valid YAML"),
    ],
)
def test_web_config_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    # Bad input: missing cert files, a clear-text password, a misspelt key, YAML syntax.
    web = tmp_path / "web.yml"
    web.write_text(text)
    with pytest.raises(WebConfigError) as e:
        load_web_config(web)
    assert str(web) in str(e.value) and key in str(e.value)


def test_100000_distinct_domains_stay_under_the_series_budget(state: State) -> None:
    k = 10
    acc = Accounting(state, TopDomains(DomainGroups(), k, min_count=100))
    fed = 0
    # Twenty busy private domains with 150 recipients each, then 100,000 one-off domains, under
    # two statuses; a hundred provider recipients too.
    for i in range(20):
        for _ in range(150):
            acc.apply(event(f"busy{i}.example"))
            fed += 1
    for i in range(100_000):
        status = ("sent", "delivered", "2.0.0") if i % 2 else ("bounced", "hostunknown", "5.1.2")
        acc.apply(event(f"d{i}.example", *status))
        fed += 1
    for _ in range(100):
        acc.apply(event("gmail.com"))
        fed += 1
    state.commit()
    server = serve(state)
    try:
        _, body = get(f"http://127.0.0.1:{server.address[1]}/metrics")
    finally:
        server.stop()
    samples = parse_exposition(body)
    deliveries = {k: v for k, v in samples.items() if k[0] == "mailpulse_deliveries_total"}
    groups = Counter(dict(labels)["domain_group"] for _, labels in deliveries)
    assert len(groups) <= len(PROVIDER_DOMAINS) + k + 1
    assert "other" in groups and "gmail" in groups
    assert sum(1 for g in groups if g.startswith("busy")) == k  # the first K busy ones promoted
    assert not any(g.startswith("d") and g.endswith(".example") for g in groups)
    # No recipient lost on the way into the budget.
    assert sum(deliveries.values()) == fed
    budget = 2000  # all mailpulse series of one node
    assert len(samples) < budget, len(samples)


def test_a_failing_gauge_source_still_serves_the_counters(state: State) -> None:
    def broken() -> tuple[HostSample | None, SourceStatus]:
        raise OSError("spool unreadable")  # bad input: a source that fails at scrape time

    state.inc("mailpulse_log_lines_total", (), 42)
    state.commit()
    server = serve(state, series=Series(state, host=broken))
    try:
        status, body = get(f"http://127.0.0.1:{server.address[1]}/metrics")
    finally:
        server.stop()
    assert status == 200
    assert parse_exposition(body)[("mailpulse_log_lines_total", frozenset(COMMON.items()))] == 42
