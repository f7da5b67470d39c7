"""The agent's web serving, for every HTTP endpoint it has: the exporter-toolkit web config
(TLS, basic auth with bcrypt hashes, extra headers), the HTTP(S) server and the landing page.

Pages are registered by path (`WebServer.route`): /metrics by the Prometheus exporter, and any
later endpoint the same way, behind the same TLS and authentication.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mailpulse.config import ConfigError, read_yaml

log = logging.getLogger(__name__)

DEFAULT_LISTEN = ("127.0.0.1", 9154)


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


@dataclass
class Page:
    """What a route answers."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


# A route's handler: the request's headers in, the page out.
Handler = Callable[[Message], Page]


@dataclass
class Route:
    handler: Handler
    title: str  # linked from the landing page when not ""
    compress: bool  # gzip the body when the client accepts it
    image: bool = False  # shown on the landing page as a picture (the graphs), not a link


LANDING = """<!doctype html>
<html><head><title>mailpulse</title></head>
<body><h1>mailpulse agent</h1>
<p>Node <b>{node}</b>, role <b>{role}</b>.</p>
{links}</body></html>
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Refused TLS handshakes, resets, timeouts: the client's problem, not worth a traceback.
        log.debug("http: connection from %s failed", client_address, exc_info=True)


class WebServer:
    """HTTP(S) server for / and the registered routes, in its own threads."""

    def __init__(
        self,
        listen: tuple[str, int] = DEFAULT_LISTEN,
        web: WebConfig | None = None,
        landing_vars: Mapping[str, str] | None = None,
    ) -> None:
        web = web or WebConfig()
        self.routes: dict[str, Route] = {}
        self.landing_vars = {
            k: html.escape(v) for k, v in (landing_vars or {"node": "", "role": ""}).items()
        }
        auth = _Authenticator(web.users)
        extra_headers = dict(web.headers)
        routes = self.routes
        landing = self.landing

        class Handler(BaseHTTPRequestHandler):
            server_version = "mailpulse"
            timeout = 30  # a client that stalls mid-request loses its thread after this

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

            def _send(self, page: Page) -> None:
                self.send_response(page.status)
                self.send_header("Content-Type", page.content_type)
                self.send_header("Content-Length", str(len(page.body)))
                for k, v in {**extra_headers, **page.headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(page.body)

            def do_GET(self) -> None:  # noqa: N802
                if not auth.check(self.headers.get("Authorization")):
                    self._send(Page(b"Unauthorized\n", TEXT, UNAUTHORIZED, 401))
                    return
                path = self.path.split("?", 1)[0]
                route = routes.get(path)
                if path == "/":
                    self._send(Page(landing(), "text/html; charset=utf-8"))
                elif route is None:
                    self._send(Page(b"Not Found\n", TEXT, status=404))
                else:
                    self._send(answer(route, path, self.headers))

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

    def route(
        self,
        path: str,
        handler: Handler,
        title: str = "",
        compress: bool = False,
        image: bool = False,
    ) -> None:
        self.routes[path] = Route(handler, title, compress, image)

    def landing(self) -> bytes:
        links = "".join(
            f'<p><img src="{html.escape(path)}" alt="{html.escape(r.title)}"></p>\n'
            if r.image
            else f'<p><a href="{html.escape(path)}">{html.escape(r.title)}</a></p>\n'
            for path, r in self.routes.items()
            if r.title
        )
        return LANDING.format(links=links, **self.landing_vars).encode()

    def start(self) -> WebServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()


TEXT = "text/plain; charset=utf-8"
UNAUTHORIZED = {"WWW-Authenticate": 'Basic realm="mailpulse"'}


def answer(route: Route, path: str, headers: Message) -> Page:
    try:
        page = route.handler(headers)
    except Exception:
        log.exception("%s failed", path)
        return Page(b"failed\n", "text/plain", status=500)
    if route.compress and "gzip" in headers.get("Accept-Encoding", ""):
        page.body = gzip.compress(page.body, compresslevel=1)
        page.headers["Content-Encoding"] = "gzip"
    return page
