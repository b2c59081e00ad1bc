"""`appliance-console watch`: the fleet live, sized to the terminal, problems first.

On a terminal it is a `rich` Live display on the alternate screen (like `top`): one frame that is
exactly as tall and as wide as the terminal, rebuilt from the retained states at most four times a
second and once a second for the clocks. Rows: offline sites first, then health errors, failed
self-tests, failed updates, then the rest; a line says how many did not fit. Elsewhere (a pipe, a
log) it prints one line per change, as before; `--once` prints one frame and stops; `--json` gives
rows. Only the rows that fit are handed to rich, so a frame costs about the same at 2,000 sites
as at 242 (docs/console.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import queue
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.text import Text

from appliance.console import commands, sitelook
from appliance.console import floor as floors
from appliance.console.context import Context
from appliance.console.errors import BadInput
from appliance.console.fleet import decode, parse_topic
from appliance.console.operate import StatusBoard
from appliance.console.output import printable, table
from appliance.core.protocol import SITE_KINDS, site_topic
from appliance.core.transitions import STATES

STATE_CHOICES = (*STATES, "offline", "never_seen")
FINE = len(sitelook.PROBLEM_KINDS)
RECENT_EVENTS = 3
REDRAW_S, CLOCK_S = 0.25, 1.0
ROW_STYLE = {0: "bold red", 1: "yellow", 2: "yellow", 3: "magenta", FINE + 1: "dim"}


@dataclass(frozen=True)
class Filters:
    kinds: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    problems_only: bool = False

    @classmethod
    def parse(cls, kind: str | None, state: str | None, problems: bool) -> Filters:
        kinds = tuple(part.strip() for part in (kind or "").split(",") if part.strip())
        states = tuple(part.strip().replace(" ", "_") for part in (state or "").split(",") if part.strip())
        bad = [k for k in kinds if k not in SITE_KINDS] + [s for s in states if s not in STATE_CHOICES]
        if bad:
            raise BadInput(f"unknown {'kind' if bad[0] in kinds else 'state'} {bad[0]!r}: --kind takes "
                           f"{', '.join(SITE_KINDS)}; --state takes {', '.join(STATE_CHOICES)} (comma-separated)")
        return cls(kinds, states, problems)

    def keep(self, row: dict[str, Any]) -> bool:
        if self.kinds and row["kind"] not in self.kinds:
            return False
        if self.states and row["state"].replace(" ", "_") not in self.states:
            return False
        return not self.problems_only or row["rank"] < FINE

    def describe(self) -> str:
        parts = ([f"kind {','.join(self.kinds)}"] if self.kinds else []) + \
                ([f"state {','.join(self.states)}"] if self.states else []) + (["problems only"] if self.problems_only else [])
        return "; ".join(parts)


class WatchBoard(StatusBoard):
    """The status board plus what `watch` needs: self-tests, time zones, update failures, recent events."""

    def __init__(self, ctx: Context, filters: Filters = Filters()) -> None:
        super().__init__(ctx)
        self.filters = filters
        self.selftests: dict[str, dict[str, Any]] = {}
        self.tzs: dict[str, str] = {}
        self.updates = stored_update_events(ctx.store.db)
        self.recent: deque[tuple[float, str, str]] = deque(maxlen=50)
        # What sorting and filtering need, per site, kept between frames: only changed sites are redone.
        self._summaries: dict[str, Summary] = {}
        self._dirty: set[str] = set(self.kinds)
        self._order: list[Summary] = []

    def feed(self, topic: str, payload: bytes) -> str | None:
        """Take one message; the site whose row changed, if any (events: see `note_event`)."""
        site = self._feed(topic, payload)
        if site is not None:
            self._dirty.add(site)
        return site

    def _feed(self, topic: str, payload: bytes) -> str | None:
        parsed = parse_topic(topic, self.prefix)
        if parsed is None:
            return None
        site, leaf = parsed
        if leaf in ("state", "uptime"):
            tz = sitelook.tz_from_payload(payload)
            changed_tz = tz is not None and self.tzs.get(site) != tz
            if changed_tz:
                self.tzs[site] = tz
            if leaf == "state":
                return super().feed(topic, payload)
            return site if changed_tz else None
        if leaf == "selftest":
            document = decode(payload)
            if document is None:
                self.selftests.pop(site, None)  # cleared (site removed)
            else:
                self.selftests[site] = document
            return site
        return None

    def note_event(self, site: str, event: dict[str, Any], now: float | None = None) -> str:
        """Remember an event (update failures, the recent-events lines) and say it in words."""
        if str(event.get("type", "")).startswith("update."):
            self.updates[site] = event
            self._dirty.add(site)
        text = sitelook.describe_event(event, floors.describe_event(site, event, self.floor))
        self.recent.append((time.time() if now is None else now, site, text))
        return text

    def row(self, site_id: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        row = super().row(site_id)
        state, selftest = self.states.get(site_id), self.selftests.get(site_id)
        found = sitelook.problems(state, selftest, self.updates.get(site_id), self.seen.get(site_id), now)
        tz = self.tzs.get(site_id) or sitelook.DEFAULT_TZ
        row.update({
            "rank": sitelook.problem_rank(found, bool(state)), "problems": [text for _, text in found],
            "problem_kinds": [kind for kind, _ in found], "tz": tz,
            "local_time": _clock(now, tz), "floor_text": floors.floor_cell(row["floor"], now),
            "selftest": None if selftest is None else {"ok": selftest.get("ok"), "at": selftest.get("at"),
                                                        "failed": sitelook.failed_checks(selftest)},
            "update": sitelook.update_cell(state),
        })
        if not state:
            row["state"] = "never seen"
        return row

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every site (not filtered), problems first."""
        now = time.time() if now is None else now
        rows = [self.row(site_id, now) for site_id in set(self.kinds) | set(self.states)]
        rows.sort(key=lambda row: (row["rank"], row["site"]))
        return rows

    def shown(self, now: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(every row, the rows the filters keep), problems first."""
        rows = self.rows(now)
        return rows, [row for row in rows if self.filters.keep(row)]

    def summaries(self) -> list[Summary]:
        """Every site's Summary, problems first; only the sites changed since the last call are redone."""
        self._dirty.update(site for site in self.kinds if site not in self._summaries)
        if self._dirty:
            for site in self._dirty:
                if site not in self.kinds and site not in self.states:
                    self._summaries.pop(site, None)  # no longer registered nor seen
                    continue
                state = self.states.get(site)
                found = sitelook.problems(state, self.selftests.get(site), self.updates.get(site))
                name = (state or {}).get("state") or "never seen"
                self._summaries[site] = Summary(sitelook.problem_rank(found, bool(state)), site,
                                                self.kinds.get(site) or "(unknown)", str(name),
                                                bool((state or {}).get("online")))
            self._dirty.clear()
            self._order = sorted(self._summaries.values())
        return self._order


class Summary(NamedTuple):
    rank: int
    site: str
    kind: str
    state: str
    online: bool


_CLOCKS: dict[tuple[str, int], str] = {}


def _clock(now: float, tz: str) -> str:
    """The site's local `HH:MM ZONE`, computed once per zone and minute (2,000 rows share a handful of zones)."""
    key = (tz, int(now // 60))
    text = _CLOCKS.get(key)
    if text is None:
        if len(_CLOCKS) > 256:
            _CLOCKS.clear()
        text = _CLOCKS[key] = sitelook.local_time(now, tz)
    return text


def stored_update_events(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Each site's latest `update.*` event that `collect` stored (none without collect)."""
    try:
        rows = db.execute("SELECT e.site, e.payload FROM events e JOIN (SELECT site, max(at) AS at FROM events "
                          "WHERE type LIKE 'update.%' GROUP BY site) m ON e.site = m.site AND e.at = m.at "
                          "WHERE e.type LIKE 'update.%'").fetchall()
    except sqlite3.Error:
        return {}
    found = {}
    for site, payload in rows:
        try:
            found[site] = json.loads(payload)
        except ValueError:
            continue
    return found


# --- the frame ------------------------------------------------------------------------------------
# (key, heading, max width, least terminal width that shows it)
COLUMNS = [("site", "SITE", 22, 0), ("kind", "KIND", 9, 100), ("state_text", "STATE", 17, 0),
           ("meeting", "MEETING", 24, 120), ("floor_text", "FLOOR", 10, 0), ("problem", "PROBLEM", None, 0),
           ("update", "UPDATE", 20, 140), ("version", "VERSION", 12, 160), ("last_seen", "LAST SEEN", 20, 180),
           ("local_time", "LOCAL TIME", 10, 0)]


class WatchView:
    """A rich renderable: the board, laid out to exactly the space it is given (never more lines)."""

    def __init__(self, board: WatchBoard, spare_lines: int = 0) -> None:
        self.board = board
        self.spare_lines = spare_lines  # lines to leave free below (a prompt after `--once`)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = (options.height or console.height) - self.spare_lines
        yield from self.frame(options.max_width, max(1, height))

    def frame(self, width: int, height: int, now: float | None = None) -> Iterator[Any]:
        now = time.time() if now is None else now
        every = self.board.summaries()
        keep = self.board.filters.keep
        rows = [item for item in every if keep(item._asdict())]
        online = sum(1 for item in every if item.online)
        meeting = sum(1 for item in every if item.state == "in_meeting")
        problems = sum(1 for item in every if item.rank < FINE)
        header = (f"{len(every)} sites, {online} online, {meeting} in a meeting, {problems} with problems"
                  + (f" | {self.board.filters.describe()}: {len(rows)}" if self.board.filters.describe() else "")
                  + f" | {sitelook.local_time(now, sitelook.DEFAULT_TZ)}")
        hands = [line for line in floors.hands_line(self.board.floor, now).splitlines() if line]
        summaries = self.board._summaries
        events = [f"{sitelook.local_time(at, sitelook.DEFAULT_TZ, seconds=True)} {site}: {text}"
                  for at, site, text in self.board.recent if site in summaries and keep(summaries[site]._asdict())]
        events = events[-RECENT_EVENTS:]  # the latest events of the sites shown
        # What does not fit goes, least useful first: events, then hands beyond the first.
        room = height - 2  # header and the table's heading
        while events and room - len(hands) - len(events) < min(3, len(rows)):
            events.pop(0)
        while len(hands) > 1 and room - len(hands) - len(events) < min(3, len(rows)):
            hands.pop()
        room -= len(hands) + len(events)
        if len(rows) > room:
            room -= 1  # for the "not shown" line
        visible, hidden = rows[:max(0, room)], rows[max(0, room):]
        yield _line(header, width, "bold")
        if height < 2:
            return
        yield from table_lines([self.board.row(item.site, now) for item in visible], width)
        if hidden:
            hidden_problems = sum(1 for item in hidden if item.rank < FINE)
            yield _line(f"... {len(hidden)} more not shown ({hidden_problems} with problems); "
                        "narrow with --problems, --kind, --state, or a taller terminal", width, "dim")
        for line in hands:
            yield _line(line, width, "cyan")
        for line in events:
            yield _line(line, width, "")


def table_lines(rows: list[dict[str, Any]], width: int) -> list[Text]:
    """The table as one Text per line, columns laid out here: rich's Table measures every cell of every
    column on each frame, several times the cost of the rest of a frame."""
    columns = [column for column in COLUMNS if width >= column[3]]
    cells = []
    for row in rows:
        values = {**row, "state_text": row["state"], "problem": "; ".join(row["problems"]),
                  "last_seen": "" if row["online"] else row["last_seen"]}
        cells.append([printable(str(values.get(key) or "")) for key, _, _, _ in columns])
    widths = []
    for index, (_, heading, most, _) in enumerate(columns):
        wanted = max([cell_len(heading), *(cell_len(line[index]) for line in cells)])
        widths.append(min(wanted, most) if most else wanted)
    spare = width - (sum(widths) + 2 * (len(widths) - 1))
    flexible = [index for index, column in enumerate(columns) if column[0] in ("problem", "meeting", "site")]
    for index in flexible:  # too wide: the free-text columns give way first, down to their heading
        if spare >= 0:
            break
        give = min(-spare, widths[index] - len(columns[index][1]))
        widths[index] -= give
        spare += give
    lines = [_row_line([heading for _, heading, _, _ in columns], widths, width, "bold")]
    lines += [_row_line(line, widths, width, ROW_STYLE.get(row["rank"], "")) for line, row in zip(cells, rows, strict=True)]
    return lines


def _row_line(values: list[str], widths: list[int], width: int, style: str) -> Text:
    parts = []
    for value, size in zip(values, widths, strict=True):
        if cell_len(value) > size:
            value = set_cell_size(value, max(0, size - 1)) + "…" if size else ""
        parts.append(value + " " * (size - cell_len(value)))
    return _line("  ".join(parts).rstrip(), width, style)


def _line(text: str, width: int, style: str) -> Text:
    line = Text(printable(text), style=style, no_wrap=True, overflow="ellipsis", end="\n")
    line.truncate(width, overflow="ellipsis")
    return line


def render_text(board: WatchBoard, width: int, height: int, now: float | None = None) -> str:
    """One frame as plain text, as a terminal of width x height shows it (tests, benchmarks)."""
    console = Console(width=width, height=height, file=_Sink(), force_terminal=False, color_system=None,
                      legacy_windows=False, record=True)
    console.print(Group(*WatchView(board).frame(width, height, now)))
    return console.export_text()


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


# --- the command ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", metavar="SECONDS", help="stop after this long")
    parser.add_argument("--kind", metavar="KIND", help=f"only sites of these kinds ({', '.join(SITE_KINDS)}; comma-separated)")
    parser.add_argument("--state", metavar="STATE", help=f"only sites in these states ({', '.join(STATE_CHOICES)})")
    parser.add_argument("--problems", action="store_true",
                        help="only sites with a problem: offline, health errors, failed self-test, failed update")
    parser.add_argument("--once", action="store_true",
                        help="show one frame sized to the terminal ($COLUMNS x $LINES elsewhere) and stop")


def cmd_watch(ctx: Context, args: argparse.Namespace) -> int:
    ctx.require_init()
    duration = commands.parse_duration(args.duration, "--duration") if args.duration else None
    board = WatchBoard(ctx, Filters.parse(args.kind, args.state, args.problems))
    console = Console(file=sys.stdout)
    deadline = time.monotonic() + duration if duration else None
    try:
        with ctx.fleet() as fleet:
            fleet.subscribe([site_topic(fleet.prefix, "+", leaf) for leaf in ("state", "event", "selftest", "uptime")])
            fleet.sync()  # every retained message is in the queue now
            _drain(board, fleet.messages)
            if args.once:
                _print_once(ctx, board, console)
            elif console.is_terminal and not ctx.json:
                _run_live(board, fleet.messages, console, deadline)
            else:
                _run_lines(ctx, board, fleet.messages, deadline)
    except KeyboardInterrupt:
        pass
    finally:
        board.save()
    return 0


def _drain(board: WatchBoard, messages: queue.Queue) -> None:
    while True:
        try:
            topic, payload, _, _ = messages.get_nowait()
        except queue.Empty:
            return
        _take(board, topic, payload)


def _take(board: WatchBoard, topic: str, payload: bytes) -> tuple[str | None, tuple[str, dict[str, Any], str] | None]:
    """Feed one message: (site whose row changed, (site, event, its words) for an event)."""
    parsed = parse_topic(topic, board.prefix)
    if parsed and parsed[1] == "event":
        event = decode(payload)
        if event is None:
            return None, None
        return None, (parsed[0], event, board.note_event(parsed[0], event))
    return board.feed(topic, payload), None


def _print_once(ctx: Context, board: WatchBoard, console: Console) -> None:
    if ctx.json:
        _json_line([{key: value for key, value in row.items() if key != "rank"} for row in board.shown()[1]])
    else:
        console.print(WatchView(board, spare_lines=1))


def _run_live(board: WatchBoard, messages: queue.Queue, console: Console, deadline: float | None) -> None:
    view = WatchView(board)
    with Live(view, console=console, screen=True, auto_refresh=False, redirect_stdout=False,
              redirect_stderr=False) as live:
        drawn, dirty = 0.0, False
        while deadline is None or time.monotonic() < deadline:
            try:
                topic, payload, _, _ = messages.get(timeout=REDRAW_S)
                _take(board, topic, payload)
                _drain(board, messages)
                dirty = True
            except queue.Empty:
                pass
            now = time.monotonic()
            if (dirty and now - drawn >= REDRAW_S) or now - drawn >= CLOCK_S:
                live.refresh()
                drawn, dirty = now, False


def _line_table(board: WatchBoard) -> str:
    every, rows = board.shown()
    columns = [("site", "SITE"), ("kind", "KIND"), ("online", "ONLINE"), ("state", "STATE"), ("meeting", "MEETING"),
               ("floor_text", "FLOOR"), ("problem", "PROBLEM"), ("version", "VERSION"), ("last_seen", "LAST SEEN"),
               ("local_time", "LOCAL TIME")]
    for row in rows:
        row["problem"] = "; ".join(row["problems"]) or None
    online = sum(1 for row in every if row["online"])
    meeting = sum(1 for row in every if row["state"] == "in_meeting")
    shown = f" ({len(rows)} shown: {board.filters.describe()})" if board.filters.describe() else ""
    return (table(rows, columns) + f"{len(every)} sites, {online} online, {meeting} in a meeting{shown}\n"
            + floors.hands_line(board.floor, time.time()))


def _run_lines(ctx: Context, board: WatchBoard, messages: queue.Queue, deadline: float | None) -> None:
    """Not a terminal: the table once, then one line (or JSON object) per change, as `watch` always did."""
    if ctx.json:
        for row in board.shown()[1]:
            _json_line({key: value for key, value in row.items() if key != "rank"})
    else:
        print(_line_table(board), end="", flush=True)
    while deadline is None or time.monotonic() < deadline:
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        try:
            topic, payload, _, _ = messages.get(timeout=wait)
        except queue.Empty:
            continue
        site, event = _take(board, topic, payload)
        if site is not None:
            row = board.row(site)
            if not board.filters.keep(row):
                continue
            if ctx.json:
                _json_line({key: value for key, value in row.items() if key != "rank"})
            else:
                problem = f" ({'; '.join(row['problems'])})" if row["problems"] else ""
                print(printable(f"{time.strftime('%H:%M:%S')} {site}: {'online' if row['online'] else 'offline'} "
                                f"{row['state']}{' ' + str(row['meeting']) if row['meeting'] else ''}{problem}"),
                      flush=True)
        elif event is not None:
            where, document, text = event
            if not board.filters.keep(board.row(where)):
                continue
            if ctx.json:
                _json_line({"event": document})
            else:
                print(printable(f"{time.strftime('%H:%M:%S')} {where}: {text}"), flush=True)


def _json_line(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()
