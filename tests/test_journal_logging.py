"""How the daemon logs: under systemd through its journal stream with a priority prefix per line (fewer
scattered journal pages on the card than native entries: benchmarks/bench_journal.py), stderr otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import logging, sys
from appliance.adapters.systemd import setup_logging
print(setup_logging(), file=sys.stdout)
log = logging.getLogger("appliance.test")
log.debug("not shown at INFO")
log.info("uplink live")
log.warning("program retrying")
try:
    raise ValueError("bad frame")
except ValueError:
    log.exception("camera failed")
"""


def _run(tmp_path: Path, journal_stream: bool) -> tuple[str, list[str]]:
    err = tmp_path / "stderr"
    with open(err, "wb") as handle:
        stat = os.fstat(handle.fileno())
        env = {key: value for key, value in os.environ.items() if key not in ("JOURNAL_STREAM", "INVOCATION_ID")}
        env["PYTHONPATH"] = str(REPO)
        if journal_stream:  # what systemd sets when it connects stderr to the journal
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        out = subprocess.run([sys.executable, "-c", SCRIPT], stderr=handle, stdout=subprocess.PIPE, text=True,
                             env=env, check=True).stdout
    return out.strip(), err.read_text().splitlines()


def test_under_systemd_every_line_carries_its_priority_for_journald(tmp_path: Path) -> None:
    chosen, lines = _run(tmp_path, journal_stream=True)
    assert chosen == "journal"
    assert lines[:3] == ["<6>uplink live", "<4>program retrying", "<3>camera failed"]
    # the traceback's lines are entries of the error's priority too, not info
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: bad frame"
    assert all(line.startswith("<3>") for line in lines[2:])


def test_a_stream_that_is_not_the_journal_gets_plain_timestamped_lines(tmp_path: Path) -> None:
    chosen, lines = _run(tmp_path, journal_stream=False)
    assert chosen == "stderr"
    assert lines[0].endswith(" INFO appliance.test: uplink live")
    assert not any(line.startswith("<") for line in lines)
