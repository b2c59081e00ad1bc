"""The rollout page's report ("Target Oktober"), one for every open page, live.

The report is `appliance-console rollout --json` with the CLI's default criteria, computed from
what `collect` stored, plus what the dashboard's own subscription heard since (`LiveHub.heard`:
heartbeat buckets from online states and telemetry, and the latest self-test of each site): so a
site that comes online or reports a self-test shows on the page at once, not when `collect` has
committed it. Reading the database is the expensive part (seconds for 242 sites and months of
heartbeats on a small machine), so it is read at most every `RELOAD_S`; a change the hub heard
only rebuilds the report from the cached rows. Every page shares the one report: twenty open
pages cost what one does.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from appliance.console import records, rollout
from appliance.console.context import Context
from appliance.console.home import Home
from appliance.console.web.hub import LiveHub
from appliance.core.clock import parse_rfc3339

RELOAD_S = 300.0  # collect's rows are read again after this long (and what time alone changes is redone)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rollout.add_arguments(parser)
    return parser.parse_args([])


def _selftest(document: Any) -> tuple[float, bool, list[str], dict[str, str]] | None:
    """(at, ok, failed checks, their details) of a self-test document, as `collect` and `rollout.load` read it."""
    if not isinstance(document, dict) or not isinstance(document.get("checks"), dict):
        return None
    try:
        at = parse_rfc3339(document.get("at"))
    except (TypeError, ValueError):
        return None
    failing = rollout.failing_checks(document["checks"])
    return at, document.get("ok") is True, list(failing), failing


def overlay(sites: list[rollout.SiteData], heard: dict[str, set[int]],
            selftests: dict[str, Any]) -> list[rollout.SiteData]:
    """The stored rows plus the heartbeat buckets and self-tests heard live (what `collect` will store)."""
    out = []
    for site in sites:
        buckets = [b for b in sorted(heard.get(site.id, ())) if not _contains(site.buckets, b)]
        test = _selftest(selftests.get(site.id))
        if test is not None and any(at == test[0] for at, _, _ in site.selftests):
            test = None
        if not buckets and test is None:
            out.append(site)
            continue
        merged = list(site.buckets)
        for bucket in buckets:
            bisect.insort(merged, bucket)
        tests, failing = list(site.selftests), dict(site.failing)
        if test is not None:
            bisect.insort(tests, test[:3])
            failing[test[0]] = test[3]
        out.append(dataclasses.replace(site, buckets=merged, selftests=tests, failing=failing))
    return out


def _contains(ordered: list[int], value: int) -> bool:
    index = bisect.bisect_left(ordered, value)
    return index < len(ordered) and ordered[index] == value


class RolloutView:
    def __init__(self, hub: LiveHub, home_root: str, clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.home_root = home_root
        self.clock = clock
        self._lock = threading.Lock()  # one computation at a time; the pages waiting share its result
        self._stored: list[rollout.SiteData] | None = None
        self._loaded_at = 0.0
        self._report: dict[str, Any] | None = None
        self._key: tuple[int, float] | None = None

    def report(self) -> dict[str, Any]:
        """The report as of the last change (call in a worker thread: it may read the database)."""
        with self._lock:
            now = self.clock()
            if self._stored is None or now - self._loaded_at >= RELOAD_S:
                self._stored, self._loaded_at = self._load(), now
            with self.hub.lock:
                key = (self.hub.rollout_seq, self._loaded_at)
                if self._report is not None and key == self._key:
                    return self._report
                heard = {site: set(buckets) for site, buckets in self.hub.heard.items()}
                selftests = dict(self.hub.board.selftests)
            args = _arguments()
            criteria = rollout.parse_criteria(args)
            target = date(datetime.fromtimestamp(now, criteria.tz).year, 10, 31)
            self._report = rollout.build(overlay(self._stored, heard, selftests), now, target,
                                         rollout.parse_targets(args.targets), criteria)
            self._key = key
            return self._report

    def _load(self) -> list[rollout.SiteData]:
        ctx = Context(Home(Path(self.home_root)))
        try:
            db = records.connect(ctx.home.database)
            try:
                return rollout.load(db, ctx.store.db)
            finally:
                db.close()
        finally:
            ctx.close()
