"""The /metrics endpoint: a prometheus-client custom collector driven by the metric catalogue,
served over HTTP(S) with the exporter-toolkit web config (TLS, basic auth with bcrypt hashes).

Counters and histograms come from the persisted state; gauges (queue, host, self-metrics) come
from a callable the agent hands over, evaluated at scrape time from its latest samples.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import html
import logging
import ssl
import threading
from base64 import b64decode
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from mailpulse import catalogue
from mailpulse.config import ConfigError, read_yaml
from mailpulse.state import Labels, SeriesKey, State

log = logging.getLogger(__name__)

DEFAULT_LISTEN = ("127.0.0.1", 9154)

LiveValues = Callable[[], Mapping[SeriesKey, float]]


def _le(bound: float) -> str:
    return repr(float(bound))


class CatalogueCollector(Collector):
    """Every catalogue metric, with the agent's constant labels first."""

    def __init__(self, state: State, live: LiveValues, common: Mapping[str, str]) -> None:
        self.state = state
        self.live = live
        self.common_names = tuple(catalogue.COMMON_LABELS)
        self.common_values = tuple(common[n] for n in self.common_names)

    def collect(self) -> Iterator[Metric]:
        snap = self.state.snapshot()
        by_name: dict[str, list[tuple[Labels, Any]]] = defaultdict(list)
        for (name, labels), value in snap.counters.items():
            by_name[name].append((labels, value))
        for (name, labels), hist in snap.histograms.items():
            by_name[name].append((labels, hist))
        try:
            live = self.live()
        except Exception:
            # The gauges' sources failing must not hide the counters: serve those alone.
            log.exception("live values failed")
            live = {}
        for (name, labels), value in live.items():
            by_name[name].append((labels, value))
        for m in catalogue.CATALOGUE:
            series = by_name.get(m.name, ())
            names = [*self.common_names, *m.labels]
            family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if m.type == catalogue.COUNTER:
                family = CounterMetricFamily(m.family_name, m.help, labels=names)
            elif m.type == catalogue.GAUGE:
                family = GaugeMetricFamily(m.name, m.help, labels=names)
            else:
                family = HistogramMetricFamily(m.name, m.help, labels=names)
            for labels, value in series:
                if len(labels) != len(m.labels):
                    # A wiring mistake; never take the whole scrape down for it.
                    log.error("%s: labels %r do not match %r", m.name, labels, m.labels)
                    continue
                full = [*self.common_values, *labels]
                if isinstance(family, HistogramMetricFamily):
                    cumulative = value.cumulative()
                    buckets = [(_le(b), c) for b, c in zip(m.buckets, cumulative, strict=False)]
                    buckets.append(("+Inf", cumulative[-1]))
                    family.add_metric(full, buckets, value.sum)
                else:
                    family.add_metric(full, value)
            yield family


# -- web config (exporter-toolkit format) -------------------------------------------------------
class WebConfigError(Exception):
    pass


TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
}


@dataclass
class WebConfig:
    source: Path | None = None
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)


def load_web_config(path: Path | None) -> WebConfig:
    if path is None:
        return WebConfig()
    where = str(path)
    try:
        data = read_yaml(path) or {}
    except ConfigError as e:
        raise WebConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{where}: the top level must be a map")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"{where}: {sorted(unknown)[0]}: unknown setting")
    cfg = WebConfig(source=path)
    tls = data.get("tls_server_config")
    if tls:
        if not isinstance(tls, dict):
            raise WebConfigError(f"{where}: tls_server_config: expected a map")
        bad = set(tls) - TLS_KEYS
        if bad:
            raise WebConfigError(f"{where}: tls_server_config.{sorted(bad)[0]}: unknown setting")
        cfg.tls = _tls_context(where, tls, path.parent)
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{where}: basic_auth_users: expected a map of user: bcrypt hash")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{where}: basic_auth_users.{user}: expected a bcrypt hash")
        cfg.users[str(user)] = hashed.encode()
    http_cfg = data.get("http_server_config") or {}
    if not isinstance(http_cfg, dict) or not isinstance(http_cfg.get("headers", {}), dict):
        raise WebConfigError(f"{where}: http_server_config.headers: expected a map")
    cfg.headers = {str(k): str(v) for k, v in (http_cfg.get("headers") or {}).items()}
    return cfg


def _tls_context(where: str, tls: dict[str, Any], base: Path) -> ssl.SSLContext:
    def file(key: str) -> str:
        value = tls.get(key)
        if not isinstance(value, str) or not value:
            raise WebConfigError(f"{where}: tls_server_config.{key}: required, a file path")
        p = base / value  # relative paths are relative to the web config, as exporter-toolkit does
        if not p.is_file():
            raise WebConfigError(f"{where}: tls_server_config.{key}: no such file {p}")
        try:  # the agent's user must be able to read it, which is_file() does not tell
            p.open("rb").close()
        except OSError as e:
            raise WebConfigError(
                f"{where}: tls_server_config.{key}: cannot read {p}: {e.strerror}"
            ) from None
        return str(p)

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal and the start would hang.
        raise WebConfigError(
            f"{where}: tls_server_config.key_file: the key is encrypted; the agent needs it"
            " without a passphrase (readable by its user only)"
        )

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(file("cert_file"), file("key_file"), password=no_passphrase)
    except (ssl.SSLError, OSError) as e:
        raise WebConfigError(f"{where}: tls_server_config: cannot load the key pair: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise WebConfigError(
                    f"{where}: tls_server_config.{key}: one of {', '.join(TLS_VERSIONS)}"
                )
            setattr(ctx, attr, TLS_VERSIONS[tls[key]])
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(
            f"{where}: tls_server_config.client_auth_type: one of {', '.join(CLIENT_AUTH)}"
        )
    ctx.verify_mode = CLIENT_AUTH[auth]
    if "client_ca_file" in tls:
        try:
            ctx.load_verify_locations(file("client_ca_file"))
        except (ssl.SSLError, OSError) as e:
            raise WebConfigError(f"{where}: tls_server_config.client_ca_file: {e}") from None
    elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise WebConfigError(f"{where}: tls_server_config.client_ca_file: required by {auth}")
    return ctx


class _Authenticator:
    """bcrypt is slow on purpose; remember good and bad answers per (user, password digest)."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._cache: dict[tuple[str, bytes], bool] = {}
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            known = self._cache.get(key)
        if known is None:
            import bcrypt

            known = bcrypt.checkpw(password.encode(), hashed)
            with self._lock:
                if len(self._cache) > 1000:
                    self._cache.clear()
                self._cache[key] = known
        return known


LANDING = """<!doctype html>
<html><head><title>mailpulse</title></head>
<body><h1>mailpulse agent</h1>
<p>Node <b>{node}</b>, role <b>{role}</b>.</p>
<p><a href="/metrics">Metrics</a></p>
</body></html>
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Refused TLS handshakes, resets, timeouts: the client's problem, not worth a traceback.
        log.debug("http: connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """HTTP(S) server for / and /metrics, in its own threads."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: tuple[str, int] = DEFAULT_LISTEN,
        web: WebConfig | None = None,
        landing_vars: Mapping[str, str] | None = None,
    ) -> None:
        web = web or WebConfig()
        auth = _Authenticator(web.users)
        landing = LANDING.format(
            **{k: html.escape(v) for k, v in (landing_vars or {"node": "", "role": ""}).items()}
        ).encode()
        extra_headers = dict(web.headers)

        class Handler(BaseHTTPRequestHandler):
            server_version = "mailpulse"
            timeout = 30  # a client that stalls mid-request loses its thread after this

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

            def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in {**extra_headers, **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if not auth.check(self.headers.get("Authorization")):
                    self._send(
                        401,
                        b"Unauthorized\n",
                        "text/plain; charset=utf-8",
                        {"WWW-Authenticate": 'Basic realm="mailpulse"'},
                    )
                    return
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                    try:
                        body = encoder(registry)
                    except Exception:
                        log.exception("scrape failed")
                        self._send(500, b"scrape failed\n", "text/plain", {})
                        return
                    headers = {}
                    if "gzip" in self.headers.get("Accept-Encoding", ""):
                        body = gzip.compress(body, compresslevel=1)
                        headers["Content-Encoding"] = "gzip"
                    self._send(200, body, ctype, headers)
                elif path == "/":
                    self._send(200, landing, "text/html; charset=utf-8", {})
                else:
                    self._send(404, b"Not Found\n", "text/plain; charset=utf-8", {})

            do_HEAD = do_GET  # noqa: N815

        self.httpd = _Server(listen, Handler)
        if web.tls is not None:
            # The handshake happens on the first read, in the request's own thread, so a slow
            # or plain-HTTP client never holds up the accept loop.
            self.httpd.socket = web.tls.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.address = self.httpd.server_address
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()


def make_registry(collector: CatalogueCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
