"""Pictures drawn by the server as inline SVG (no scripts, no inline styles, no tiles from the internet):
the regency map from the sites' coordinates and the telemetry line graphs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape


def site_map(points: Sequence[tuple[str, str, float, float, str]], width: int = 640, height: int = 420) -> str:
    """`points`: (site, name, lat, lon, css class); drawn on an equirectangular frame fitted to the points'
    bounding box (north up), so a kecamatan's sites fill the picture whatever part of the world they are in."""
    if not points:
        return ""
    lats = [p[2] for p in points]
    lons = [p[3] for p in points]
    lat_min, lat_max, lon_min, lon_max = min(lats), max(lats), min(lons), max(lons)
    # A degree of longitude is shorter than one of latitude away from the equator: without this the
    # regency would come out stretched east-west (barely at Banyuwangi's 8 degrees south, a lot further out).
    squeeze = max(math.cos(math.radians((lat_min + lat_max) / 2)), 0.1)
    span_lat = max(lat_max - lat_min, 0.01)  # one site, or all in a row: not a division by zero
    span_lon = max((lon_max - lon_min) * squeeze, 0.01)
    pad = 20
    scale = min((width - 2 * pad) / span_lon, (height - 2 * pad) / span_lat)
    # Centred: the frame is fitted on its tighter side, so the other has room to spare.
    left = pad + ((width - 2 * pad) - (lon_max - lon_min) * squeeze * scale) / 2
    top = pad + ((height - 2 * pad) - (lat_max - lat_min) * scale) / 2
    parts = [f'<svg id="site-map" class="map" viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="0" y="0" width="{width}" height="{height}" class="map-bg"/>']
    for site, name, lat, lon, css in points:
        x = left + (lon - lon_min) * squeeze * scale
        y = top + (lat_max - lat) * scale
        parts.append(f'<a href="/sites/{escape(site)}"><circle id="map-{escape(site)}" class="dot {escape(css)}" '
                     f'cx="{x:.1f}" cy="{y:.1f}" r="5"><title>{escape(name)} ({escape(site)})</title></circle></a>')
    parts.append("</svg>")
    return "".join(parts)


def line_graph(label: str, series: Sequence[tuple[float, float]], width: int = 640, height: int = 160,
               css: str = "line") -> str:
    """`series`: (epoch seconds, value), oldest first; min/max labelled, no axes library needed."""
    if len(series) < 2:
        return ""
    left, right, top, bottom = 48, 10, 20, 24
    t0, t1 = series[0][0], series[-1][0]
    values = [value for _, value in series]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    span_t = max(t1 - t0, 1.0)

    def x(at: float) -> float:
        return left + (width - left - right) * (at - t0) / span_t

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - (value - low) / (high - low))

    points = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in series)
    return (f'<svg class="graph" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
            'xmlns="http://www.w3.org/2000/svg">'
            f'<text x="{left}" y="14" class="graph-title">{escape(label)}</text>'
            f'<line x1="{left}" x2="{width - right}" y1="{y(high):.1f}" y2="{y(high):.1f}" class="grid"/>'
            f'<line x1="{left}" x2="{width - right}" y1="{y(low):.1f}" y2="{y(low):.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y(high) + 4:.1f}" text-anchor="end" class="tick">{high:g}</text>'
            f'<text x="{left - 4}" y="{y(low) + 4:.1f}" text-anchor="end" class="tick">{low:g}</text>'
            f'<polyline points="{points}" class="{escape(css)}"/></svg>')
