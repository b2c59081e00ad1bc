"""Reading a spreadsheet of sites: every bad row reported with its line number, all or nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from appliance.console.errors import BadInput
from appliance.console.store import Site, check_site

REQUIRED = ("id", "name", "kind")
OPTIONAL = ("distance_km", "ring", "lat", "lon")
RINGS = ("canary", "main")  # update rings, see update_rollout.py
COORDINATES = (("lat", 90.0), ("lon", 180.0))  # WGS 84 degrees, and how far from 0 each may be


def check_coordinates(lat: str, lon: str) -> tuple[list[str], float | None, float | None]:
    """Problems with one row's lat,lon cells (empty when fine), and the numbers; both empty: no coordinates."""
    if not lat and not lon:
        return [], None, None
    problems = []
    numbers = []
    for (column, limit), text in zip(COORDINATES, (lat, lon), strict=True):
        try:
            value = float(text) if text else None
        except ValueError:
            value = None
            problems.append(f"{column} {text!r} is not a number (decimal degrees with a point, e.g. -8.2191)")
        else:
            if value is None:
                other = "lon" if column == "lat" else "lat"
                problems.append(f"{column} is empty but {other} is not: give both or neither")
            elif not -limit <= value <= limit:  # NaN fails this too
                problems.append(f"{column} {text!r} must be between {-limit:g} and {limit:g}")
                value = None
        numbers.append(value)
    return (problems, None, None) if problems else (problems, numbers[0], numbers[1])


def parse(path: str | Path) -> list[Site]:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file; nothing imported") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a CSV file; nothing imported") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start}); save the sheet as CSV UTF-8; nothing imported") from None
    if not text.strip():
        raise BadInput(f"{path}: the file is empty; nothing imported")
    first_line = text.splitlines()[0]
    # Spreadsheets set to Indonesian locale export with ';'.
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [column.strip().lower() for column in next(reader)]
    problems = []
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        problems.append(f"line 1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"(the header must name at least {','.join(REQUIRED)}[,distance_km][,ring][,lat,lon])")
    duplicated = sorted({column for column in header if column and header.count(column) > 1})
    if duplicated:
        problems.append(f"line 1: column{'s' if len(duplicated) > 1 else ''} {', '.join(duplicated)} appear more than once")
    if ("lat" in header) != ("lon" in header):
        problems.append(f"line 1: column {'lat' if 'lat' in header else 'lon'} without "
                        f"{'lon' if 'lat' in header else 'lat'}: a map position needs both")
    if problems:
        raise BadInput(f"{path}: bad header; nothing imported", problems)
    sets_coordinates = "lat" in header

    sites: list[Site] = []
    first_seen: dict[str, int] = {}
    end_of_previous = reader.line_num
    for fields in reader:
        line = end_of_previous + 1
        end_of_previous = reader.line_num
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            problems.append(f"line {line}: expected {len(header)} fields like the header, found {len(fields)}")
            continue
        row = {column: value.strip() for column, value in zip(header, fields, strict=False)}
        site_id = row["id"]
        row_problems, distance = check_site(site_id, row["name"], row["kind"], row.get("distance_km"))
        ring = (row["ring"].lower() or "main") if "ring" in row else None  # the column, when present, decides
        if ring is not None and ring not in RINGS:
            row_problems.append(f"ring {row['ring']!r} must be one of {', '.join(RINGS)} (or empty: main)")
        coordinate_problems, lat, lon = check_coordinates(row.get("lat", ""), row.get("lon", ""))
        row_problems.extend(coordinate_problems)
        problems.extend(f"line {line}: {problem}" for problem in row_problems)
        if site_id in first_seen:
            problems.append(f"line {line}: id {site_id!r} already appears on line {first_seen[site_id]}")
        first_seen.setdefault(site_id, line)
        if not row_problems:
            sites.append(Site(site_id, row["name"], row["kind"], distance, ring, lat, lon, sets_coordinates))
    if problems:
        raise BadInput(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}; nothing imported", problems)
    if not sites:
        raise BadInput(f"{path}: no sites below the header; nothing imported")
    return sites
