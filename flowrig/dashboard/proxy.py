"""The run's dashboard proxy: the live Dask dashboard for the person who started the run.

The scheduler serves its dashboard only over the run's mutual TLS
(:mod:`flowrig.roles.private_http`): on loopback every local user can connect, and
without a certificate nobody gets anything. A browser has no certificate, so the
process the person started (the runner on the local backend, the host process on
docker) runs a :class:`DashboardProxy` on 127.0.0.1 for the run's life:

- the link it prints carries a random token (``/status?flowrig-token=...``); a request
  with it gets an HttpOnly, ``SameSite=Strict`` cookie for this proxy alone and is sent
  on to the same page without the token (so the token leaves the address bar and
  every ``Referer``);
- a request with the cookie is forwarded to the scheduler with the run's client
  certificate: plain HTTP requests and websockets alike (bokeh's live pages update
  over a websocket);
- anything else, including a request whose ``Host`` is not this proxy's own address
  (DNS rebinding) or a websocket from another origin, gets 403 and nothing of the run.

The cookie and any other cookie or credential of the browser are never forwarded:
bokeh copies the request's headers and cookies into the session token it writes into
the page. The proxy runs on an event loop of its own, in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
import ssl
import threading
import urllib.parse
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders
from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler, websocket_connect

from flowrig.errors import InfrastructureError

logger = logging.getLogger("flowrig.dashboard")

#: The query parameter of the link that carries the run's token.
TOKEN_PARAMETER = "flowrig-token"
#: The page the link opens: the status page, with the task stream.
STATUS_PATH = "/status"
#: Seconds the proxy's thread may take to listen.
START_TIMEOUT = 10.0
#: Seconds an upstream request may take (bokeh's JavaScript is a few MB).
UPSTREAM_TIMEOUT = 60.0
#: The largest websocket message passed on (bokeh sends whole plots' data at once).
MAX_MESSAGE_SIZE = 256 * 1024 * 1024

#: Headers of one hop only (RFC 9110), never passed on.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "proxy-connection",
    }
)
#: Request headers the scheduler never sees: the browser's credentials (bokeh would
#: copy them into the page) and what the upstream request sets itself.
DROPPED_REQUEST = HOP_BY_HOP | {"host", "cookie", "authorization", "content-length"}
#: Response headers replaced by the proxy's own.
DROPPED_RESPONSE = HOP_BY_HOP | {"content-length", "set-cookie", "server", "date"}

DENIED = (
    "This is the dashboard of a flowrig run. Open it with the link the run printed: "
    "it holds the run's token.\n"
)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class DashboardProxy:
    """An authenticated proxy on 127.0.0.1 in front of a dashboard served over mutual TLS.

    Parameters
    ----------
    upstream
        ``https://host:port`` of the scheduler's dashboard.
    ssl_context
        The client context that reaches it: the run's leaf, trusting the run's CA.
    host
        Loopback address to listen on.

    Examples
    --------
    >>> proxy = DashboardProxy("https://127.0.0.1:8787", context)  # doctest: +SKIP
    >>> proxy.start()  # doctest: +SKIP
    'http://127.0.0.1:41234/status?flowrig-token=...'
    >>> proxy.stop()  # doctest: +SKIP
    """

    def __init__(self, upstream: str, ssl_context: ssl.SSLContext, *, host: str = "127.0.0.1") -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "https" or not parsed.netloc:
            raise ValueError(f"the dashboard proxy needs an https:// upstream, got {upstream!r}")
        self.upstream = f"https://{parsed.netloc}"
        self.ssl_context = ssl_context
        self.host = host
        self.port: int | None = None
        #: In the link only: exchanged for the cookie.
        self.token = secrets.token_urlsafe(32)
        #: The cookie's value: what every later request of the browser carries.
        self.session = secrets.token_urlsafe(32)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._sockets: set[Any] = set()
        self._error: BaseException | None = None

    # --- the public side ---------------------------------------------------------------
    @property
    def cookie_name(self) -> str:
        # Browsers send 127.0.0.1's cookies to every port of it: one name per proxy, so
        # that two runs' proxies never overwrite each other's.
        return f"flowrig-dashboard-{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def link(self) -> str:
        """The link to print: the status page, with the run's token."""
        if self.port is None:
            raise RuntimeError("the dashboard proxy has not started")
        return f"{self.origin}{STATUS_PATH}?{TOKEN_PARAMETER}={self.token}"

    def start(self) -> str:
        """Listen and serve in a thread of its own; returns :attr:`link`.

        Raises
        ------
        InfrastructureError
            When it cannot listen.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise InfrastructureError(f"the dashboard proxy cannot listen on {self.host}: {exc}") from None
        self.port = listener.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(listener, ready), name="flowrig-dashboard-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT) or self._error is not None:
            self.stop()
            raise InfrastructureError(f"the dashboard proxy did not start: {self._error or 'timed out'}")
        return self.link

    def stop(self) -> None:
        """Close every connection and stop serving; safe to call more than once."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(START_TIMEOUT)
        self._thread = None

    # --- the proxy's own thread ---------------------------------------------------------
    def _serve(self, listener: socket.socket, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(listener, ready))
        except BaseException as exc:  # reported to start(); never into the run
            self._error = exc
            ready.set()

    async def _main(self, listener: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        client = AsyncHTTPClient(force_instance=True, max_clients=32)
        server = HTTPServer(self._application(client), xheaders=False)
        server.add_sockets([listener])
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.stop()
            for connection in list(self._sockets):
                connection.close(1001, "the run has ended")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.close_all_connections(), START_TIMEOUT)
            client.close()

    def _application(self, client: AsyncHTTPClient) -> Application:
        options = {"proxy": self, "client": client}
        return Application(
            [(r"/.*/ws", _WebSocketForward, options), (r"/.*", _Forward, options)],
            websocket_max_message_size=MAX_MESSAGE_SIZE,
            log_function=_log_request,
        )


def _log_request(handler: Any) -> None:
    # Tornado logs every 4xx as a warning; refused requests are not the run's news.
    logger.debug("%s %s %s", handler.get_status(), handler.request.method, handler.request.path)


def _forwarded_headers(headers: HTTPHeaders) -> HTTPHeaders:
    kept = HTTPHeaders()
    for name, value in headers.get_all():
        if name.lower() not in DROPPED_REQUEST:
            kept.add(name, value)
    return kept


class _Gate(RequestHandler):
    """What every request passes first: the proxy's own ``Host``, then the cookie or
    the link's token (exchanged for the cookie)."""

    def initialize(self, proxy: DashboardProxy, client: AsyncHTTPClient) -> None:
        self.proxy = proxy
        self.client = client

    def _own_host(self) -> bool:
        # Any other name (DNS rebinding: a site whose name resolves to 127.0.0.1) is refused.
        port = self.proxy.port
        return self.request.host in (f"{self.proxy.host}:{port}", f"localhost:{port}")

    def _allowed(self) -> bool:
        morsel = self.request.cookies.get(self.proxy.cookie_name)
        return self._own_host() and _same(morsel.value if morsel is not None else None, self.proxy.session)

    def _deny(self) -> None:
        self.clear()
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(DENIED)


class _Forward(_Gate):
    """Plain HTTP: every method, forwarded as it came, minus credentials."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def prepare(self) -> None:
        if self._allowed():
            return
        if self.request.method == "GET" and self._take_token():
            return
        self._deny()

    def _take_token(self) -> bool:
        """A valid token: set the cookie and send the browser to the page without it."""
        proxy = self.proxy
        if not self._own_host() or not _same(self.get_query_argument(TOKEN_PARAMETER, None), proxy.token):
            return False
        self.set_cookie(proxy.cookie_name, proxy.session, path="/", httponly=True, samesite="Strict")
        query = [(k, v) for k, v in urllib.parse.parse_qsl(self.request.query, keep_blank_values=True)
                 if k != TOKEN_PARAMETER]
        target = self.request.path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        self.redirect(target, status=303)
        return True

    async def _forward(self) -> None:
        proxy = self.proxy
        method = self.request.method
        request = HTTPRequest(
            proxy.upstream + self.request.uri,
            method=method,
            headers=_forwarded_headers(self.request.headers),
            body=self.request.body if method in ("POST", "PUT", "PATCH") else None,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            ssl_options=proxy.ssl_context,
            request_timeout=UPSTREAM_TIMEOUT,
        )
        response = await self.client.fetch(request, raise_error=False)
        if response.code == 599:  # no answer: the scheduler has gone, or is busy
            self.set_status(502)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("The run's scheduler does not answer: the run may have ended.\n")
            return
        self.clear()
        self.clear_header("Content-Type")
        self.set_status(response.code, response.reason)
        for name, value in response.headers.get_all():
            lowered = name.lower()
            if lowered in DROPPED_RESPONSE:
                continue
            if lowered == "location" and value.startswith(proxy.upstream):
                value = proxy.origin + value[len(proxy.upstream):]
            self.add_header(name, value)
        self.set_header("Referrer-Policy", "no-referrer")
        if response.body and method != "HEAD" and response.code not in (204, 304):
            self.write(response.body)
        await self.finish()

    get = head = post = put = patch = delete = options = _forward


class _WebSocketForward(_Gate, WebSocketHandler):
    """A websocket (bokeh's live updates), opened to the scheduler with the run's
    certificate before the browser's is accepted, then passed on both ways."""

    upstream: Any = None

    def prepare(self) -> None:
        if not self._allowed():
            self._deny()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        proxy = self.proxy
        offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        request = HTTPRequest(
            proxy.upstream.replace("https://", "wss://", 1) + self.request.uri,
            headers={"Origin": proxy.upstream},
            ssl_options=proxy.ssl_context,
            connect_timeout=UPSTREAM_TIMEOUT,
        )
        try:
            self.upstream = await websocket_connect(
                request, subprotocols=offered or None, max_message_size=MAX_MESSAGE_SIZE
            )
        except Exception as exc:
            logger.debug("the dashboard's websocket did not open upstream: %s", exc)
            self.set_status(502)
            self.finish()
            return
        await super().get(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream is not None else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.proxy._sockets.add(self)
        asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            message = await self.upstream.read_message()
            if message is None:
                break
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                break
        self.close()

    async def on_message(self, message: str | bytes) -> None:
        with contextlib.suppress(WebSocketClosedError):
            await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        self.proxy._sockets.discard(self)
        if self.upstream is not None:
            self.upstream.close()
