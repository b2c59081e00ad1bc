"""The dashboard's HTTP face (docs/dashboard.md; paths fixed in the contract): login, the JSON API, live
updates by server-sent events, the security headers; the pages themselves are in pages.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from appliance.console.errors import BadInput, ConsoleError, InvalidFields
from appliance.console.operators import OPERATOR, OperatorBook
from appliance.console.web.actions import Actions
from appliance.console.web.auth import LoginLimiter, Session, Sessions
from appliance.console.web.hub import Change, LiveHub
from appliance.console.web.i18n import lang_of, translator
from appliance.console.web.views import Views

log = logging.getLogger("appliance.console.web")
COOKIE, LANG_COOKIE = "rapat_session", "rapat_lang"
MAX_BODY = 64 * 1024
KEEPALIVE_S = 15.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
Handler = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """Every answer, pages, API, SSE and static files alike: no framing, no sniffing, no inline script."""

    def __init__(self, app: Any, tls: bool) -> None:
        self.app = app
        self.headers = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                        "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin",
                        "Permissions-Policy": "camera=(), microphone=(), geolocation=()"}
        if tls:
            self.headers["Strict-Transport-Security"] = "max-age=31536000"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Dashboard:
    """Everything the routes share."""

    hub: LiveHub
    views: Views
    actions: Actions
    book: OperatorBook
    sessions: Sessions
    limiter: LoginLimiter
    tls: bool
    home_root: str

    def session(self, request: Request) -> Session | None:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        try:
            operator = self.book.get(session.operator)
        except ConsoleError:
            operator = None
        if operator is None or operator.role != session.role:  # removed, or the role changed: log in again
            self.sessions.end_operator(session.operator)
            return None
        return session


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


async def read_form(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadInput(f"request body larger than {MAX_BODY} bytes")
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            document = json.loads(body or b"{}")
        except ValueError as exc:
            raise BadInput(f"the body is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise BadInput("the body must be a JSON object")
        return document
    return {key: values[-1] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}


def error_response(exc: ConsoleError) -> JSONResponse:
    document: dict[str, Any] = {"error": exc.message, "problems": exc.problems}
    if isinstance(exc, InvalidFields):
        document["fields"] = exc.fields
    return JSONResponse(document, status_code=400 if isinstance(exc, BadInput) else 503)


def page(dash: Dashboard, handler: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
    """A page: a session or a redirect to /login; `?lang=` switches the language for the session."""

    async def wrapped(request: Request) -> Response:
        session = dash.session(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        if request.query_params.get("lang"):
            session.lang = lang_of(request.query_params["lang"])
        return await handler(request, session)

    return wrapped


def api(dash: Dashboard, handler: Callable[[Request, Session], Awaitable[Response]], *, changes: bool = False) -> Handler:
    """An API call: 401 without a session; a change also needs the CSRF header (403) and an operator (403)."""

    async def wrapped(request: Request) -> Response:
        session = dash.session(request)
        if session is None:
            return JSONResponse({"error": "not logged in"}, status_code=401)
        if changes:
            if not session.check_csrf(request.headers.get("x-csrf-token")):
                return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
            if session.role != OPERATOR:
                return JSONResponse({"error": f"{session.operator} is a {session.role}: viewers cannot change anything"},
                                    status_code=403)
        try:
            return await handler(request, session)
        except ConsoleError as exc:
            return error_response(exc)

    return wrapped


# --- login -------------------------------------------------------------------------------------------
def login_routes(dash: Dashboard) -> list[Route]:
    def login_page(request: Request, lang: str, error: str | None = None, status: int = 200,
                   username: str = "") -> HTMLResponse:
        html = dash.views.render("login.html", lang, error=error, username=username,
                                 next=request.query_params.get("next", ""))
        response = HTMLResponse(html, status_code=status)
        response.set_cookie(LANG_COOKIE, lang, httponly=True, samesite="strict", secure=dash.tls)
        return response

    async def get_login(request: Request) -> Response:
        return login_page(request, lang_of(request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)))

    async def post_login(request: Request) -> Response:
        lang = lang_of(request.cookies.get(LANG_COOKIE))
        t = translator(lang)
        form = await read_form(request)
        username, password = str(form.get("username") or "").strip(), str(form.get("password") or "")
        address = client_address(request)
        wait = dash.limiter.retry_after(username, address)
        if wait > 0:
            response = login_page(request, lang, t("login_limited", s=int(wait) + 1), 429, username)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        operator = await run_in_threadpool(dash.book.verify, username, password) if username and password else None
        if operator is None:
            dash.limiter.failed(username, address)
            return login_page(request, lang, t("login_failed"), 401, username)
        dash.limiter.succeeded(username)
        session = dash.sessions.create(operator.name, operator.role, lang)
        target = str(form.get("next") or request.query_params.get("next") or "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"  # never an open redirect
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="strict", secure=dash.tls, path="/")
        log.info("dashboard: %s logged in from %s", operator.name, address)
        return response

    async def post_logout(request: Request) -> Response:
        session = dash.session(request)
        if session is None:
            return JSONResponse({"error": "not logged in"}, status_code=401)
        form = await read_form(request)
        if not session.check_csrf(request.headers.get("x-csrf-token") or form.get("csrf_token")):
            return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
        dash.sessions.end(session.token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return [Route("/login", get_login, methods=["GET"]), Route("/login", post_login, methods=["POST"]),
            Route("/logout", post_logout, methods=["POST"])]


# --- the JSON API --------------------------------------------------------------------------------------
def api_routes(dash: Dashboard) -> list[Route]:
    views, actions = dash.views, dash.actions

    async def sites(request: Request, session: Session) -> Response:
        rows = views.rows()
        return JSONResponse({"broker": {"ok": dash.hub.broker_ok, "problem": dash.hub.broker_problem}, "sites": rows})

    async def one_site(request: Request, session: Session) -> Response:
        from appliance.console.web.pages import site_document  # noqa: PLC0415 - pages imports this module

        document = await run_in_threadpool(site_document, dash, request.path_params["site"])
        return JSONResponse(document)

    async def meetings(request: Request, session: Session) -> Response:
        now = time.time()
        return JSONResponse({"meetings": [views.meeting(mid, now) for mid in views.meeting_ids()]})

    async def start(request: Request, session: Session) -> Response:
        form = await read_form(request)
        return JSONResponse(await run_in_threadpool(actions.start_meeting, session.operator, form))

    async def end(request: Request, session: Session) -> Response:
        form = await read_form(request)
        result = await run_in_threadpool(actions.end_meeting, session.operator, request.path_params["meeting_id"], form)
        return JSONResponse(result)

    def floor(action: str) -> Callable[[Request, Session], Awaitable[Response]]:
        async def handler(request: Request, session: Session) -> Response:
            form = await read_form(request)
            return JSONResponse(await run_in_threadpool(actions.floor, session.operator, action, form))
        return handler

    return [Route("/api/sites", api(dash, sites)), Route("/api/sites/{site}", api(dash, one_site)),
            Route("/api/meetings", api(dash, meetings), methods=["GET"]),
            Route("/api/meetings", api(dash, start, changes=True), methods=["POST"]),
            Route("/api/meetings/{meeting_id}/end", api(dash, end, changes=True), methods=["POST"]),
            Route("/api/floor/grant", api(dash, floor("grant"), changes=True), methods=["POST"]),
            Route("/api/floor/revoke", api(dash, floor("revoke"), changes=True), methods=["POST"]),
            Route("/api/events", api(dash, lambda request, session: events(dash, request, session)))]


# --- live updates ---------------------------------------------------------------------------------------
def sse(name: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def render_change(dash: Dashboard, change: Change | None, lang: str, role: str, since: int = 0) -> list[str]:
    """The SSE messages for one change (None: everything a page that just connected needs)."""
    if change is None:
        return _render(dash, None, lang, role, since)
    rendered = change.rendered.get((lang, role))
    if rendered is None:
        rendered = change.rendered[(lang, role)] = _render(dash, change, lang, role, since)
    return rendered


def _render(dash: Dashboard, change: Change | None, lang: str, role: str, since: int) -> list[str]:
    hub, views, now = dash.hub, dash.views, time.time()
    out = []
    if change is None or change.broker:
        out.append(sse("broker", {"ok": hub.broker_ok, "text": "" if hub.broker_ok else
                                  f"{translator(lang)('broker_down')} ({hub.broker_problem})"}))
    with hub.lock:
        if change is None:
            sites = {site for site, seq in hub.site_seq.items() if seq > since}
            touched = {site for site, seq in hub.touch_seq.items() if seq > since}
            rollout = hub.rollout_seq > since
        else:
            sites, touched, rollout = set(change.sites), change.touched, change.rollout
        rows = {site: views.row(site, now) for site in sites if site in hub.board.kinds or site in hub.board.states}
        seq = hub.seq if change is None else change.seq  # what the page holds once it has these rows
    if rows or change is None:
        all_rows = views.rows(now)
        out.append(sse("rows", {"rows": {site: views.row_html(row, lang, now) for site, row in rows.items()},
                                "counts": translator(lang)("sites_online", **views.counts(all_rows))}, hub.mark(seq)))
    if change is None or change.meetings or change.acks:
        out.append(sse("meetings", {"panels": views.meeting_panels(lang, role, now)}))
    if change is not None and change.events:
        out.append(sse("events", {"items": [{"site": site, "text": text, "at": at} for at, site, text in change.events]}))
    if touched:  # the site page fetches its live part again when its site is named
        out.append(sse("touched", {"sites": sorted(touched)}))
    if rollout:  # and the rollout page its report
        out.append(sse("rollout", {"seq": seq}))
    return out


async def events(dash: Dashboard, request: Request, session: Session) -> Response:
    loop = asyncio.get_running_loop()
    changes: asyncio.Queue[Change] = asyncio.Queue()
    # A reconnecting stream's Last-Event-ID is newer than the page's own mark in the URL.
    since_seq = dash.hub.position(request.headers.get("last-event-id") or request.query_params.get("since"))
    stop = dash.hub.listen(lambda change: loop.call_soon_threadsafe(changes.put_nowait, change))
    token = session.token

    async def stream():  # noqa: ANN202
        try:
            yield "retry: 2000\n\n"
            yield "".join(render_change(dash, None, session.lang, session.role, since_seq))
            while True:
                try:
                    change = await asyncio.wait_for(changes.get(), KEEPALIVE_S)
                except TimeoutError:
                    if dash.sessions.get(token) is None:  # logged out or expired: the stream ends too
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield "".join(render_change(dash, change, session.lang, session.role))  # one write per batch
        finally:
            stop()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


def create_app(dash: Dashboard, static_dir: str) -> Any:
    from appliance.console.web.pages import page_routes  # noqa: PLC0415 - pages builds on this module

    routes = [*login_routes(dash), *api_routes(dash), *page_routes(dash, page),
              Mount("/static", app=StaticFiles(directory=static_dir), name="static")]

    from contextlib import asynccontextmanager  # noqa: PLC0415

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202
        dash.hub.start()
        try:
            yield
        finally:
            await run_in_threadpool(dash.hub.stop)

    return SecurityHeaders(Starlette(routes=routes, lifespan=lifespan), dash.tls)
