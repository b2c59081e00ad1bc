"""100 SIGKILLs at random moments while the real ledger adapter commits checkpoints back to back.

A small dedicated writer process (the real `UptimeLedger` + `LedgerStore`, checkpointing as fast as
the disk allows, so a kill almost always lands inside a transaction) prints each total once its
commit has returned. After every kill the ledger must open cleanly, hold at least every printed
total (nothing committed is lost), at most one checkpoint more (the one in flight), and never less
than after the previous kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.adapters.ledger import LedgerStore

REPO = Path(__file__).resolve().parents[1]
STEP_S = 60
WRITER = f"""
import sys
from appliance.adapters.ledger import LedgerStore
from appliance.core.uptime import UptimeLedger
store = LedgerStore(sys.argv[1]); store.open()
days, state = store.load()
ledger = UptimeLedger("Asia/Jakarta", days, state)
mono, wall = 1000.0, 1795744800.0 + sum(d.up_s for d in days)
ledger.start(mono, "boot-1", connected=True)
print("ready", flush=True)
while True:
    mono += {STEP_S}
    changed = ledger.checkpoint(mono, wall + (mono - 1000.0), True)
    store.save([ledger.days[d] for d in sorted(changed)], ledger.state, ledger.pending(), sorted(ledger.days))
    print(round(sum(d.up_s for d in ledger.days.values())), flush=True)
"""


def total(directory: Path) -> float:
    store = LedgerStore(directory)
    store.open()
    try:
        assert store.db is not None
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        days, _ = store.load()
    finally:
        store.close()
    assert not list(directory.glob("*.broken-*")), "the ledger had to be set aside: it did not open"
    return sum(day.up_s for day in days)


def test_hundred_sigkills_never_lose_more_than_one_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(20261027)
    previous = 0.0
    kills_mid_run = 0
    for _ in range(100):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.03))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        printed = [int(line) for line in writer.stdout.read().split()]
        writer.stdout.close()
        now = total(tmp_path)
        committed = printed[-1] if printed else previous
        kills_mid_run += bool(printed)
        assert now >= committed, f"a committed checkpoint was lost: {now} < {committed}"
        assert now <= committed + STEP_S, f"more than the in-flight checkpoint appeared: {now} vs {committed}"
        assert now >= previous, f"totals went backwards: {now} < {previous}"
        previous = now
    assert kills_mid_run >= 50  # most kills really interrupted a stream of commits
    assert previous > 0
