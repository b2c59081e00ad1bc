"""The rollout report as one self-contained HTML page (inline CSS and SVG, no fonts or scripts to
fetch), in Bahasa Indonesia, sized to read from the back of a room on a projector."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from appliance.core.clock import parse_rfc3339
from appliance.core.selftest import texts

KIND_ID = {"kecamatan": "Kecamatan", "desa": "Desa", "other": "Lainnya"}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des")
WEEKDAYS_ID = {"mon": "Sen", "tue": "Sel", "wed": "Rab", "thu": "Kam", "fri": "Jum", "sat": "Sab", "sun": "Min"}

CSS = """
*{box-sizing:border-box}body{margin:0;font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;background:#f4f6f9;color:#1b2733}
header{background:#0f3b66;color:#fff;padding:28px 48px}header h1{margin:0;font-size:34px}
header p{margin:6px 0 0;font-size:18px;opacity:.85}main{padding:24px 48px 40px}
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:20px}
.tile{background:#fff;border-radius:10px;padding:18px 22px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.tile .label{font-size:17px;color:#4a5a6a}.tile .value{font-size:44px;font-weight:bold;margin-top:4px}
.tile .value small{font-size:24px;color:#4a5a6a;font-weight:normal}.tile .note{font-size:15px;color:#4a5a6a;margin-top:4px}
.bar{height:10px;background:#dde3ea;border-radius:5px;margin-top:10px;overflow:hidden}.bar div{height:100%;background:#1f8a4c}
.late{color:#b3261e}.ok{color:#1f8a4c}
section{background:#fff;border-radius:10px;padding:18px 22px;margin-top:22px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
section h2{margin:0 0 10px;font-size:22px}table{border-collapse:collapse;width:100%;font-size:16px}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid #e3e8ee;vertical-align:top}th{background:#f0f3f7}
td.why{color:#7a2b1f}.legend span{display:inline-block;margin-right:22px;font-size:15px}
.legend i{display:inline-block;width:26px;height:0;border-top:4px solid;vertical-align:middle;margin-right:6px}
footer{font-size:14px;color:#4a5a6a;padding:0 48px 30px}
"""


def id_number(value: float, decimals: int | None = None) -> str:
    """A number as Indonesian writes it: "." between thousands, "," before decimals (2.000; 97,5).
    `decimals` None: as many as the value has (up to 2), none for a whole number."""
    text = f"{value:,.{2 if decimals is None else decimals}f}"
    if decimals is None and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.translate(str.maketrans({",": ".", ".": ","}))


def zone_name(report: dict[str, Any]) -> str:
    """The abbreviation of the report's time zone at its time (WIB, WITA, WIT), not a fixed "WIB"."""
    tz = ZoneInfo(report["criteria"].get("timezone") or "Asia/Jakarta")
    return datetime.fromtimestamp(parse_rfc3339(report["as_of"]), tz).tzname() or str(tz.key)


def _fmt(value: float) -> str:
    return id_number(value, 0)


def _date_id(text: str) -> str:
    day = date.fromisoformat(text)
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def render(report: dict[str, Any]) -> str:
    summary, travel, projection = report["summary"], report["travel"], report["projection"]
    days_left = report["days_left"]
    tiles = []
    for kind in ("kecamatan", "desa"):
        numbers = summary.get(kind) or {"ready": 0, "target": 0, "registered": 0}
        target = numbers["target"] or numbers["registered"] or 1
        share = min(100.0, 100.0 * numbers["ready"] / target)
        tiles.append(f'<div class="tile"><div class="label">{KIND_ID[kind]} siap</div>'
                     f'<div class="value">{_fmt(numbers["ready"])}<small> / {_fmt(target)}</small></div>'
                     f'<div class="bar"><div style="width:{share:.1f}%"></div></div>'  # CSS: a "." decimal
                     f'<div class="note">{_fmt(numbers["registered"])} terdaftar</div></div>')
    if days_left >= 0:
        deadline = f'<div class="value">{_fmt(days_left)}<small> hari</small></div>'
    else:
        deadline = f'<div class="value late">+{_fmt(-days_left)}<small> hari lewat</small></div>'
    finish = projection["complete_on"]
    pace = id_number(projection["pace_per_day"])
    pace_note = (f"laju {pace} lokasi/hari; semua siap {_date_id(finish)}" if finish
                 else "dengan laju sekarang target tidak tercapai")
    tiles.append(f'<div class="tile"><div class="label">Menuju target {_date_id(report["target"])}</div>'
                 f'{deadline}<div class="note">{escape(pace_note)}</div></div>')
    tiles.append(f'<div class="tile"><div class="label">Perjalanan dihindari</div>'
                 f'<div class="value">{_fmt(travel["km"])}<small> km</small></div>'
                 f'<div class="note">{_fmt(travel["hours"])} jam · {_fmt(travel["meetings_joined"])} rapat diikuti daring'
                 '</div></div>')
    not_ready = [row for row in report["sites"] if not row["ready"]]
    never = [row for row in not_ready if row["reasons"][0]["code"] == "never_connected"]
    working = [row for row in not_ready if row not in never]
    rows = "".join(
        f'<tr><td>{escape(row["name"])}</td><td>{KIND_ID.get(row["kind"], row["kind"])}</td>'
        f'<td class="why">{"<br>".join(escape(r["text_id"]) for r in row["reasons"])}</td></tr>'
        for row in sorted(working, key=lambda r: (r["kind"] != "kecamatan", len(r["reasons"]), r["name"])))
    never_text = ", ".join(escape(row["name"]) for row in sorted(never, key=lambda r: (r["kind"] != "kecamatan", r["name"])))
    missing = sum(max(0, (numbers["target"] or 0) - numbers["registered"]) for numbers in summary.values())
    ready = ", ".join(escape(row["name"]) for row in report["sites"] if row["ready"]) or "belum ada"
    criteria = report["criteria"]
    workdays = ",".join(WEEKDAYS_ID.get(day, day) for day in criteria["workdays"].split(","))
    method = (f"Siap = terdaftar dan pernah terhubung; daring dalam {id_number(criteria['seen_within_h'])} jam terakhir; "
              f"uji mandiri terakhir lulus; waktu aktif ≥ {id_number(criteria['uptime_min_pct'])}% pada jam kerja "
              f"{criteria['office_hours']} {zone_name(report)} ({workdays}) selama {criteria['window_days']} "
              f"hari terakhir, diukur per {criteria['bucket_min']} menit dari telemetri. Perjalanan = rapat diikuti daring "
              f"× 2 × jarak ke kantor kabupaten; jam pada {id_number(travel['speed_kmh'])} km/jam.")
    return f"""<!DOCTYPE html>
<html lang="id"><head><meta charset="utf-8"><title>Kesiapan Rapat Daring — {escape(report["today"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header><h1>Kesiapan Perangkat Rapat Daring — Kabupaten Banyuwangi</h1>
<p>Per {_date_id(report["today"])} · {_fmt(report["ready_total"])} dari {_fmt(report["needed_total"])} lokasi siap</p></header>
<main><div class="tiles">{"".join(tiles)}</div>
<section><h2>Lokasi siap dari waktu ke waktu</h2>{chart(report)}
<div class="legend"><span><i style="border-color:#0f3b66"></i>Semua lokasi siap</span>
<span><i style="border-color:#e08a00"></i>Kecamatan siap</span>
<span><i style="border-color:#0f3b66;border-top-style:dashed"></i>Proyeksi laju sekarang</span>
<span><i style="border-color:#b3261e;border-top-style:dotted"></i>Target</span></div></section>
<section><h2>Terpasang tetapi belum siap ({_fmt(len(working))}) dan alasannya</h2>
<table><tr><th>Lokasi</th><th>Jenis</th><th>Alasan</th></tr>{rows}</table></section>
{selftest_section(report)}
<section><h2>Belum pernah terhubung ({_fmt(len(never))})</h2><p>{never_text or "tidak ada"}</p>
{f"<p>Ditambah {_fmt(missing)} lokasi target yang belum didaftarkan di konsol.</p>" if missing else ""}</section>
<section><h2>Sudah siap ({_fmt(report["ready_total"])})</h2><p>{ready}</p></section></main>
<footer>{escape(method)}<br>Dibuat oleh appliance-console rollout pada {escape(report["as_of"])}.</footer>
</body></html>
"""


def chart(report: dict[str, Any], width: int = 1100, height: int = 380) -> str:
    points = report["burnup"]
    if not points:
        return '<p>Belum ada data: jalankan <code>appliance-console collect</code>.</p>'
    left, right, top, bottom = 60, 30, 20, 50
    first = date.fromisoformat(points[0]["date"])
    today = date.fromisoformat(points[-1]["date"])
    target = date.fromisoformat(report["target"])
    finish = report["projection"]["complete_on"]
    end = max(today, target)
    if finish and date.fromisoformat(finish) <= end + timedelta(days=30):
        end = max(end, date.fromisoformat(finish))  # a later finish only shows as the line's slope
    start = min(first, target)
    span = max(1, (end - start).days)
    needed = max(report["needed_total"], max(p["ready"] for p in points), 1)
    x = lambda day: left + (width - left - right) * (day - start).days / span  # noqa: E731
    y = lambda value: top + (height - top - bottom) * (1 - value / needed)  # noqa: E731
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="grafik lokasi siap" '
             'xmlns="http://www.w3.org/2000/svg" font-family="DejaVu Sans, Arial, sans-serif" font-size="14">']
    for step in range(0, 5):
        value = needed * step / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e3e8ee"/>'
                     f'<text x="{left - 8}" y="{y(value) + 5:.1f}" text-anchor="end" fill="#4a5a6a">{value:.0f}</text>')
    tick = max(1, span // 8)
    day = start
    while day <= end:
        parts.append(f'<text x="{x(day):.1f}" y="{height - bottom + 24}" text-anchor="middle" fill="#4a5a6a">'
                     f'{day.day} {MONTHS[day.month - 1]}</text>')
        day += timedelta(days=tick)
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(report["needed_total"]):.1f}" '
                 f'y2="{y(report["needed_total"]):.1f}" stroke="#b3261e" stroke-width="2" stroke-dasharray="3 4"/>'
                 f'<text x="{width - right}" y="{y(report["needed_total"]) - 8:.1f}" text-anchor="end" fill="#b3261e">'
                 f'{report["needed_total"]} lokasi</text>')
    parts.append(f'<line x1="{x(target):.1f}" x2="{x(target):.1f}" y1="{top}" y2="{height - bottom}" stroke="#b3261e" '
                 f'stroke-width="2" stroke-dasharray="3 4"/><text x="{x(target) - 6:.1f}" y="{height - bottom - 8}" '
                 f'text-anchor="end" fill="#b3261e">target {_date_id(report["target"])}</text>')
    coords = [(x(date.fromisoformat(p["date"])), y(p["ready"])) for p in points]
    area = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    parts.append(f'<polygon points="{coords[0][0]:.1f},{y(0):.1f} {area} {coords[-1][0]:.1f},{y(0):.1f}" '
                 'fill="#0f3b66" fill-opacity="0.12"/>')
    parts.append(f'<polyline points="{area}" fill="none" stroke="#0f3b66" stroke-width="4"/>')
    kec = " ".join(f"{x(date.fromisoformat(p['date'])):.1f},{y(p['kecamatan']):.1f}" for p in points)
    parts.append(f'<polyline points="{kec}" fill="none" stroke="#e08a00" stroke-width="3"/>')
    pace = report["projection"]["pace_per_day"]
    if pace > 0 and points[-1]["ready"] < report["needed_total"]:
        days = (end - today).days
        reach = min(report["needed_total"], points[-1]["ready"] + pace * days)
        stop = today + timedelta(days=int((reach - points[-1]["ready"]) / pace))
        parts.append(f'<line x1="{coords[-1][0]:.1f}" y1="{coords[-1][1]:.1f}" x2="{x(stop):.1f}" y2="{y(reach):.1f}" '
                     'stroke="#0f3b66" stroke-width="3" stroke-dasharray="10 7"/>')
    parts.append(f'<circle cx="{coords[-1][0]:.1f}" cy="{coords[-1][1]:.1f}" r="6" fill="#0f3b66"/>'
                 f'<text x="{coords[-1][0] - 10:.1f}" y="{coords[-1][1] - 12:.1f}" text-anchor="end" font-weight="bold" '
                 f'font-size="18" fill="#0f3b66">{points[-1]["ready"]} siap</text>')
    parts.append("</svg>")
    return "".join(parts)


def selftest_section(report: dict[str, Any]) -> str:
    """The last self-test of every site: those that failed with each failing check and its detail
    (as `appliance-console selftest` and `collect` stored them), then how many passed or have none."""
    names, tz = texts("id"), ZoneInfo(report["criteria"].get("timezone") or "Asia/Jakarta")
    tested = [row for row in report["sites"] if row["selftest"]]
    failed = sorted((row for row in tested if not row["selftest"]["ok"]),
                    key=lambda r: (r["kind"] != "kecamatan", r["name"]))

    def when(text: str) -> str:
        moment = datetime.fromtimestamp(parse_rfc3339(text), tz)
        return f"{_date_id(moment.date().isoformat())} {moment:%H:%M} {moment.tzname()}"

    rows = "".join(
        f'<tr><td>{escape(row["name"])}</td><td>{when(row["selftest"]["at"])}</td><td class="why">'
        + "<br>".join(escape(f"{names.get(check, check)}: {(row['selftest'].get('details') or {}).get(check) or 'gagal'}")
                      for check in row["selftest"]["failed"] or ["?"])
        + "</td></tr>" for row in failed)
    table = (f"<table><tr><th>Lokasi</th><th>Uji terakhir</th><th>Pemeriksaan gagal</th></tr>{rows}</table>"
             if failed else "<p>Tidak ada uji mandiri terakhir yang gagal.</p>")
    return (f'<section id="selftests"><h2>Uji mandiri terakhir: {_fmt(len(failed))} gagal, '
            f'{_fmt(len(tested) - len(failed))} lulus, {_fmt(len(report["sites"]) - len(tested))} belum diuji</h2>'
            f'{table}</section>')
