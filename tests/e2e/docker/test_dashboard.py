"""The dashboard link of local and docker runs opens the live Dask dashboard in a real
browser on this machine, and nothing of it opens for anyone without the link.

The scheduler serves its dashboard only over the run's mutual TLS; the run's proxy on
127.0.0.1 (:mod:`flowrig.dashboard`) takes the link's token for an HttpOnly cookie and
forwards HTTP and bokeh's websockets with the run's client certificate.
"""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import json
import re
import ssl
import subprocess
import textwrap
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from flowrig.backends.base import ClusterSpec
from flowrig.backends.local import LocalBackend
from flowrig.dashboard import TOKEN_PARAMETER
from flowrig.project.sizing import ClusterSize
from tests.browser_support import DevToolsError, artifacts_dir
from tests.docker_support import derived_image, docker_run_env
from tests.run_support import FLOWRIG, SLOW_MAP_FLOW, RunWatcher, assert_nothing_left, listening, marked_env

#: The state of the page's live task stream, read from BokehJS: its document's roots,
#: the task keys the task stream plot holds, the size its canvas was laid out at.
LIVE_STATE = """(() => {
  const B = window.Bokeh;
  if (!B || !B.documents || !B.documents.length) return null;
  const doc = B.documents[0];
  const plot = doc.get_model_by_name("task_stream");
  if (!plot) return null;
  const data = plot.renderers[0].data_source.data;
  const keys = Array.from(data instanceof Map ? data.get("key") : data["key"]);
  const view = B.index.get_one ? B.index.get_one(plot) : null;
  const box = view && view.canvas_view ? view.canvas_view.bbox : null;
  return {
    roots: doc.roots().map(r => r.name), keys: keys, title: document.title, href: location.href,
    cookies: document.cookie, width: box ? box.width : 0, height: box ? box.height : 0,
  };
})()"""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, *, headers: dict[str, str] | None = None, follow: bool = True, jar=None,
         context: ssl.SSLContext | None = None):
    """(status, headers, body) of a GET; errors are answers too."""
    handlers: list = [] if follow else [_NoRedirect()]
    if jar is not None:
        handlers.append(urllib.request.HTTPCookieProcessor(jar))
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _websocket_status(url: str, headers: dict[str, str]) -> int:
    """The status a websocket handshake gets (101 when it opens)."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    async def attempt() -> int:
        try:
            connection = await websocket_connect(HTTPRequest(url, headers=headers), subprotocols=["bokeh", "x"])
        except HTTPClientError as exc:
            return exc.code
        connection.close()
        return 101

    return asyncio.run(attempt())


def _bokeh_token_payloads(page: bytes) -> list[dict]:
    """The payloads of the bokeh session tokens a page holds (bokeh copies the request's
    headers and cookies into them)."""
    payloads = []
    for token in re.findall(rb'"token":\s*"([A-Za-z0-9_.\-]+)"', page):
        head = token.split(b".")[0]
        payloads.append(json.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4))))
    return payloads


def test_the_proxy_opens_the_dashboard_to_the_holder_of_the_link_only(tls):
    spec = ClusterSpec(run_id=f"dash{uuid.uuid4().hex[:6]}", size=ClusterSize(n_workers=1, adapt=None), tls=tls)
    started = LocalBackend().start(spec)
    try:
        link = started.dashboard_link
        parsed = urllib.parse.urlsplit(link)
        assert parsed.scheme == "http" and parsed.hostname == "127.0.0.1" and parsed.path == "/status"
        origin = f"http://{parsed.netloc}"
        token = urllib.parse.parse_qs(parsed.query)[TOKEN_PARAMETER][0]
        port = parsed.port

        # Without the token, or with another one: nothing of the run, no cookie.
        for url in (origin + "/status", origin + "/", origin + "/info/main/workers.html", origin + "/metrics",
                    f"{origin}/status?{TOKEN_PARAMETER}=not-it", f"{origin}/status?{TOKEN_PARAMETER}="):
            status, headers, body = _get(url)
            assert status == 403, url
            assert b"Dask" not in body and "Set-Cookie" not in headers, url

        # The link: a cookie for this proxy (HttpOnly, SameSite=Strict), then the page
        # without the token.
        status, headers, _ = _get(link, follow=False)
        assert status == 303
        assert headers["Location"] == "/status"
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"flowrig-dashboard-{port}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        session = cookie.split(";")[0].split("=", 1)[1]
        assert session != token

        jar = http.cookiejar.CookieJar()
        status, _, page = _get(link, jar=jar)
        assert status == 200 and b"Dask" in page
        # Neither the link's token nor the browser's cookie reaches the scheduler (bokeh
        # would write it into the page).
        assert token.encode() not in page and session.encode() not in page
        payloads = _bokeh_token_payloads(page)
        assert payloads, "the status page holds a bokeh session token"
        for payload in payloads:
            assert "flowrig-dashboard" not in json.dumps(payload), payload
        status, _, workers = _get(origin + "/info/main/workers.html", jar=jar)
        assert status == 200 and b"Workers" in workers

        # The cookie on another name of this machine (DNS rebinding) gets nothing.
        status, _, _ = _get(origin + "/status", headers={
            "Host": f"rebound.example:{port}", "Cookie": f"flowrig-dashboard-{port}={session}"})
        assert status == 403
        # Websockets: not without the cookie, not from another site's page.
        ws = f"ws://{parsed.netloc}/status/ws"
        assert _websocket_status(ws, {}) == 403
        assert _websocket_status(ws, {"Cookie": f"flowrig-dashboard-{port}={session}",
                                      "Origin": "http://evil.example"}) == 403

        # The scheduler's own dashboard answers only the run's certificate.
        dashboard = started.cluster.scheduler_info["services"]["dashboard"]
        upstream = f"127.0.0.1:{dashboard}"
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://{upstream}/status", timeout=10)
        anyone = ssl.create_default_context()
        anyone.check_hostname, anyone.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"https://{upstream}/status", timeout=10, context=anyone)
        own = tls.to_security().get_connection_args("client")["ssl_context"]
        status, _, _ = _get(f"https://{upstream}/health", context=own)
        assert status == 200
        scratch = Path(started.cluster.scheduler_info["workers"] and next(
            iter(started.cluster.scheduler_info["workers"].values()))["local_directory"]).parents[1]
    finally:
        started.close()
    assert not listening(link)
    assert not scratch.exists()


def _check_live_dashboard(browser, link: str, shot: Path) -> dict:
    """Open ``link`` in ``browser`` while the run maps its slow tasks: the live status
    page renders its task stream, which then shows new tasks arriving."""
    browser.navigate(link)
    try:
        first = browser.wait_for(
            f"(() => {{ const s = {LIVE_STATE}; return s && s.keys.some(k => k.startsWith('slow-')) && s; }})()",
            120, "the status page showed no task of the run's map",
        )
    except DevToolsError as exc:
        # What the page says instead (a scheduler without bokeh says so in words).
        text = browser.evaluate("document.body ? document.body.innerText.slice(0, 300) : ''")
        raise DevToolsError(f"{exc}; the page says: {text!r}") from None
    assert first["title"] == "Dask: Status"
    assert "task_stream" in first["roots"]
    assert first["width"] > 100 and first["height"] > 100, first
    # The token left the address bar; the cookie is out of the page's reach.
    assert first["href"].endswith("/status") and TOKEN_PARAMETER not in first["href"]
    assert "flowrig-dashboard" not in first["cookies"]
    seen = set(first["keys"])
    # Live: the websocket keeps bringing tasks the page had not seen.
    later = browser.wait_for(
        f"(() => {{ const s = {LIVE_STATE}; const seen = new Set({json.dumps(sorted(seen))});"
        f" return s && s.keys.some(k => k.startsWith('slow-') && !seen.has(k)) && s; }})()",
        60, "the task stream stopped getting new tasks",
    )
    browser.screenshot(shot)
    return later


def _browse(browser, link: str, tmp_path: Path, name: str) -> None:
    shot = tmp_path / f"{name}.png"
    try:
        _check_live_dashboard(browser, link, shot)
    except (AssertionError, DevToolsError) as exc:
        saved = artifacts_dir(tmp_path) / f"{name}-failed.png"
        try:
            browser.screenshot(saved)
        except Exception as shot_error:  # the browser itself may be what failed
            saved = Path(f"(no screenshot: {shot_error})")
        raise AssertionError(f"{exc}; screenshot: {saved}") from None
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def _run_and_browse(browser, command: list[str], env: dict[str, str], tmp_path: Path, name: str) -> str:
    """Start ``flowrig run`` (a map of 400 half-second tasks), open its printed link in
    ``browser`` once the flow runs, check the live page, then end the run with SIGTERM
    (it tears down: exit 143); returns the link."""
    run = RunWatcher(subprocess.Popen(
        [*FLOWRIG, "run", *command, "--param", "n=400", "--param", "seconds=0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ))
    try:
        link = run.wait_for(r"dashboard at (http://127\.0\.0\.1:\d+/status\?\S+)", 300).group(1)
        run.wait_for(r"Beginning flow run", 120)
        _browse(browser, link, tmp_path, name)
    finally:
        code = run.stop()
    assert code == 143, run.tail()
    return link


def test_a_browser_opens_the_live_dashboard_of_a_local_run(headless_browser, project_factory, tmp_path):
    project = project_factory(SLOW_MAP_FLOW, 'flow = "flow.py:main"\n[cluster]\nn_workers = 2\n')
    marker = f"dashboard-{tmp_path.name}"
    link = _run_and_browse(headless_browser, [str(project)], marked_env(marker), tmp_path, "local-status")
    assert_nothing_left(marker, link)


@pytest.mark.docker
def test_a_browser_opens_the_live_dashboard_of_a_docker_run(headless_browser, docker_client, seed_image, tmp_path):
    from flowrig.containers import engine

    project = tmp_path / "slow"
    project.mkdir()
    (project / "flow.py").write_text(textwrap.dedent(SLOW_MAP_FLOW))
    (project / "flowrig.toml").write_text('flow = "flow.py:main"\n[cluster]\nbackend = "docker"\nn_workers = 2\n')
    run_id = f"dash{uuid.uuid4().hex[:6]}"
    with derived_image(docker_client, seed_image, project, "flowrig-dashboard") as image:
        try:
            link = _run_and_browse(
                headless_browser, [str(project), "--backend", "docker", "--image", image],
                docker_run_env(run_id), tmp_path, "docker-status",
            )
        finally:
            engine.remove_run(docker_client, run_id)
    assert not listening(link)
    assert engine.run_containers(docker_client, run_id) == []


def test_a_dashboard_address_of_the_projects_own_is_served_as_distributed_serves_it(tls, caplog):
    """``[cluster.options] dashboard_address``: the project asked for the scheduler's own
    dashboard at that address, so it gets it (no proxy, no token), with a warning that
    anyone who reaches it sees the run."""
    options = {"dashboard_address": "127.0.0.1:0"}
    spec = ClusterSpec(run_id=f"dash{uuid.uuid4().hex[:6]}", size=ClusterSize(n_workers=0, adapt=None), tls=tls,
                       options=options)
    with caplog.at_level("WARNING", logger="flowrig.local"):
        started = LocalBackend().start(spec)
    try:
        link = started.dashboard_link
        assert TOKEN_PARAMETER not in link
        assert link == started.cluster.dashboard_link
        status, _, body = _get(link)
        assert status == 200 and b"Dask" in body
        assert "without authentication" in caplog.text
    finally:
        started.close()


def test_the_announce_line_says_where_a_dashboard_link_opens():
    from flowrig.backends.base import dashboard_reach
    from flowrig.run.execute import dashboard_words

    here = f"http://127.0.0.1:41234/status?{TOKEN_PARAMETER}=abc"
    assert dashboard_words(here, None) == f"dashboard at {here}"
    vpc = dashboard_reach(True, "VPC vpc-1 (CIDR 10.0.0.0/16)")
    assert dashboard_words("http://10.0.3.4:8787/status", vpc) == (
        "dashboard at http://10.0.3.4:8787/status "
        "(reachable from inside VPC vpc-1 (CIDR 10.0.0.0/16) only, plain HTTP without a login)"
    )
    assert dashboard_words(None, dashboard_reach(False, "the VPC")) == (
        "dashboard at none ([cluster.options] dashboard = true opens it to the VPC)"
    )
    assert dashboard_words(None, None) == "dashboard at none"
