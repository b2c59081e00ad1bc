"""The dashboard's pages: Armada (fleet), one site, Rapat (meeting), Target Oktober (rollout).

The site page and the rollout page are live by parts: with `?fragment=1` they answer only their
changing part (`_site.html`, `_rollout.html`), which the script fetches again when the server-sent
events say that part changed (a message from that site; a change the rollout report counts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from appliance.console import rollout_html, site_cli, sitelook
from appliance.console.context import Context
from appliance.console.errors import BadInput
from appliance.console.home import Home
from appliance.console.web import svg
from appliance.console.web.app import Dashboard
from appliance.console.web.auth import Session
from appliance.console.web.i18n import translator
from appliance.console.web.rollout_view import RolloutView
from appliance.core.floor import FLOOR_MODES
from appliance.core.protocol import GROUPS, SITE_KINDS

PROBLEM_FILTERS = ("any", *sitelook.PROBLEM_KINDS)
TELEMETRY_WINDOW_S = 24 * 3600
EVENTS_SHOWN = 20


def _context(dash: Dashboard) -> Context:
    return Context(Home(Path(dash.home_root)))


def site_document(dash: Dashboard, site: str) -> dict[str, Any]:
    """`site SITE --json`'s document, from the hub's retained messages and the database (`collect`)."""
    hub = dash.hub
    with hub.lock:
        live = {"state": hub.board.states.get(site), "selftest": hub.board.selftests.get(site), "uptime": hub.uptime.get(site)}
        recent = list(hub.telemetry.get(site, ()))
    ctx = _context(dash)
    try:
        document, _ = site_cli.gather(ctx, site, EVENTS_SHOWN, live={key: value for key, value in live.items() if value})
        since = time.time() - TELEMETRY_WINDOW_S
        stored = ctx.store.db.execute("SELECT at, cpu_temp_c, mem_available_mb, mqtt_reconnects FROM telemetry "
                                      "WHERE site = ? AND at >= ? ORDER BY at", (site, since)).fetchall()
    finally:
        ctx.close()
    series = {float(row[0]): (row[1], row[2], row[3]) for row in stored}
    for item in recent:
        at = sitelook.when(item.get("at"))
        if at is not None and at >= since:
            series[at] = (item.get("cpu_temp_c"), item.get("mem_available_mb"), item.get("mqtt_reconnects"))
    document["telemetry_series"] = [{"at": at, "cpu_temp_c": v[0], "mem_available_mb": v[1], "mqtt_reconnects": v[2]}
                                    for at, v in sorted(series.items())]
    document["broker"] = {"ok": hub.broker_ok, "problem": hub.broker_problem}
    return document


def _series(document: dict[str, Any], key: str) -> list[tuple[float, float]]:
    return [(item["at"], float(item[key])) for item in document["telemetry_series"] if isinstance(item[key], (int, float))]


def page_routes(dash: Dashboard, page: Callable[..., Any]) -> list[Route]:
    views = dash.views
    rollout_view = RolloutView(dash.hub, dash.home_root)

    def render(template: str, session: Session, active: str, seq: int | None = None, **context: Any) -> HTMLResponse:
        html = views.render(template, session.lang, session=session, active=active, broker_ok=dash.hub.broker_ok,
                            broker_problem=dash.hub.broker_problem, seq=dash.hub.mark(dash.hub.seq if seq is None else seq),
                            **context)
        return HTMLResponse(html)

    def fragment(request: Request) -> bool:
        return request.query_params.get("fragment") == "1"

    async def fleet(request: Request, session: Session) -> Response:
        now = time.time()
        rows = views.rows(now)
        kind, problem = request.query_params.get("kind", ""), request.query_params.get("problem", "")
        points = [(row["site"], info["name"], info["lat"], info["lon"], row["dot"])
                  for row in rows if (info := views.sites.get(row["site"])) and info.get("lat") is not None]
        return render("fleet.html", session, "fleet", rows=rows, now=now, counts=views.counts(rows),
                      kinds=SITE_KINDS, problems=PROBLEM_FILTERS, kind=kind if kind in SITE_KINDS else "",
                      problem=problem if problem in PROBLEM_FILTERS else "", site_map=svg.site_map(points),
                      row_html=lambda row: views.row_html(row, session.lang, now))

    async def one_site(request: Request, session: Session) -> Response:
        site = request.path_params["site"]
        seq = dash.hub.seq  # before reading: a change after this is sent to the page, never lost in between
        try:
            document = await run_in_threadpool(site_document, dash, site)
        except BadInput as exc:
            if fragment(request):
                return HTMLResponse("", status_code=404)
            return HTMLResponse(views.render("error.html", session.lang, session=session, active="fleet",
                                             message=exc.message, broker_ok=dash.hub.broker_ok, seq=0), status_code=404)
        t = translator(session.lang)
        graphs = [svg.line_graph(t("cpu_temp"), _series(document, "cpu_temp_c"), css="line temp"),
                  svg.line_graph(t("memory"), _series(document, "mem_available_mb"), css="line mem"),
                  svg.line_graph(t("reconnects"), _series(document, "mqtt_reconnects"), css="line rec")]
        uptime = (document.get("uptime") or {}).get("days") or []
        context = {"doc": document, "graphs": [g for g in graphs if g], "site_id": site,
                   "uptime_days": [day for day in uptime if isinstance(day, dict)][-14:]}
        if fragment(request):
            return HTMLResponse(views.render("_site.html", session.lang, **context))
        return render("site.html", session, "fleet", seq, **context)

    async def meeting(request: Request, session: Session) -> Response:
        now = time.time()
        ctx = _context(dash)
        try:
            streams = ctx.store.recent_streams()
        finally:
            ctx.close()
        preset = streams[0] if streams else {"program_url": "", "ingest_url": ""}
        return render("meeting.html", session, "meeting", panels=views.meeting_panels(session.lang, session.role, now),
                      groups=GROUPS, modes=FLOOR_MODES, preset=preset, streams=streams, sites=sorted(views.sites))

    async def rollout_page(request: Request, session: Session) -> Response:
        seq = dash.hub.seq
        report = await run_in_threadpool(rollout_view.report)
        not_ready = [row for row in report["sites"] if not row["ready"]]
        not_ready.sort(key=lambda r: (r["kind"] != "kecamatan", len(r["reasons"]), r["name"]))
        context = {"report": report, "chart": rollout_html.chart(report), "not_ready": not_ready[:300]}
        if fragment(request):
            return HTMLResponse(views.render("_rollout.html", session.lang, **context))
        return render("rollout.html", session, "rollout", seq, **context)

    return [Route("/", page(dash, fleet)), Route("/sites/{site}", page(dash, one_site)),
            Route("/meeting", page(dash, meeting)), Route("/rollout", page(dash, rollout_page))]

