"""Adapters on their own: raw sd_notify, atomic state files, the panel on gpiozero mock pins, back-off."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.adapters import control
from appliance.adapters.panel import Panel
from appliance.adapters.storage import ReplayStore, write_atomic
from appliance.adapters.systemd import Notifier
from appliance.core import led
from appliance.core.backoff import Backoff
from appliance.core.io import ButtonDown, ButtonUp, HealthReport
from appliance_dev.waiting import wait_until


@pytest.mark.parametrize("abstract", [False, True])
def test_raw_notify_datagram(tmp_path: Path, abstract: bool) -> None:
    name = f"@rapat-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:] if abstract else name)
        notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000"})
        notifier._systemd_notify = None  # the path used where systemd-python is not installed
        notifier.ready()
        notifier.status("idle")
        sock.settimeout(2)
        assert sock.recv(100) == b"READY=1"
        assert sock.recv(100) == b"STATUS=idle"
    assert notifier.watchdog_interval_s == 15.0


def test_notifier_off_without_systemd() -> None:
    notifier = Notifier({})
    assert notifier.notify("READY=1") is False and notifier.watchdog_interval_s is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_atomic_write_leaves_old_or_new(tmp_path: Path) -> None:
    target = tmp_path / "state" / "file.json"
    write_atomic(target, b"old")
    assert target.read_bytes() == b"old" and target.stat().st_mode & 0o777 == 0o600

    class Boom(Exception):
        pass

    original = os.replace
    os.replace = lambda *a: (_ for _ in ()).throw(Boom())  # a crash just before the rename
    try:
        with pytest.raises(Boom):
            write_atomic(target, b"new")
    finally:
        os.replace = original
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]  # no temporary left behind


def test_replay_store_survives_torn_lines_and_compacts_what_the_core_forgot(tmp_path: Path) -> None:
    store = ReplayStore(str(tmp_path))
    assert store.load() == {}
    store.remember("a", 1500.0)
    store.remember("b", 1100.0)
    store.close()
    with open(store.path, "ab") as handle:
        handle.write(b"c 15")  # a power cut mid-line
    reopened = ReplayStore(str(tmp_path))
    assert reopened.load() == {"a": (1500.0, None), "b": (1100.0, None), "c": (15.0, None)}  # the core decides
    for index in range(600):
        reopened.remember(f"x{index}", 1201.0 + index, forget=(f"x{index - 1}",) if index else ("b", "c"))
    reopened.remember("last", 5000.0)
    reopened.close()
    lines = store.path.read_text().splitlines()
    assert len(lines) < 600  # compacted at least once: forgotten ids were dropped
    final = ReplayStore(str(tmp_path)).load()
    # What the core forgot before the last compaction is gone; what it forgot since is on lines the
    # next compaction drops (loading it again is harmless: the core forgets it again).
    assert final["a"][0] == 1500.0 and final["x599"][0] == 1800.0 and final["last"][0] == 5000.0
    assert "b" not in final and "c" not in final and "x10" not in final


def test_replay_store_that_cannot_write_takes_nothing_and_rewrites_next_time(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    store = ReplayStore(str(tmp_path))
    store.load()
    store.remember("a", 1500.0)
    real_fdatasync = os.fdatasync

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", disk_full)
    with pytest.raises(OSError):
        store.remember("b", 1600.0)
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    store.remember("c", 1700.0)
    store.close()
    assert ReplayStore(str(tmp_path)).load() == {"a": (1500.0, None), "c": (1700.0, None)}  # "b" was refused


def test_panel_button_edges_and_led_pattern_on_mock_pins() -> None:
    factory = MockFactory()
    posted: list = []
    panel = Panel("mock", 17, 27, posted.append, pin_factory=factory)
    panel.open()
    try:
        assert HealthReport("panel", "ok") in posted
        button = factory.pin(17)
        button.drive_low()
        button.drive_high()
        assert [type(e) for e in posted if isinstance(e, (ButtonDown, ButtonUp))] == [ButtonDown, ButtonUp]
        led_pin = factory.pin(27)
        panel.show(led.ON)
        wait_until(lambda: led_pin.state, 1, what="the LED on")
        panel.show(led.FAST_BLINK)
        blinking_from = len(led_pin.states)
        wait_until(lambda: {change.state for change in led_pin.states[blinking_from:]} >= {True, False}, 2,
                   what="the LED blinking")
        panel.show(led.OFF)
        wait_until(lambda: not led_pin.state, 1, what="the LED off")
    finally:
        panel.close()


def test_panel_missing_hardware_is_reported_not_fatal() -> None:
    posted: list = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
        panel = Panel("gpio", 17, 27, posted.append)
        panel.open()
    assert posted and posted[0].component == "panel" and posted[0].value == "missing"
    panel.show(led.ON)  # harmless without an LED
    panel.close()


def test_backoff_full_jitter_capped() -> None:
    draws = iter([1.0 - 1e-9] * 20)
    backoff = Backoff(base_s=1, cap_s=60, rand=lambda: next(draws))
    ceilings = [round(backoff.next_delay()) for _ in range(9)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.reset()
    assert Backoff(rand=lambda: 0.0).next_delay() == 0.0
    spread = {round(Backoff().next_delay(), 3) for _ in range(50)}
    assert len(spread) > 40  # 242 sites do not pick the same moment


def test_clock_sync_falls_back_to_timesyncd_when_adjtimex_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.adapters import sysinfo

    monkeypatch.setattr(sysinfo, "_adjtimex_state", lambda: None)  # as under ProtectClock=yes
    flag = tmp_path / "timesync" / "synchronized"
    assert sysinfo.clock_synced(flag) is None  # no timesyncd at all: unknown, not "synced"
    flag.parent.mkdir()
    assert sysinfo.clock_synced(flag) is False
    flag.touch()
    assert sysinfo.clock_synced(flag) is True
    monkeypatch.setattr(sysinfo, "_adjtimex_state", lambda: sysinfo.TIME_ERROR)
    assert sysinfo.clock_synced(flag) is False  # the kernel's own word wins when it can be read


def test_event_loop_survives_a_failing_event_and_runs_timers() -> None:
    from appliance.loop import EventLoop

    handled: list = []

    def dispatch(item: object) -> None:
        if item == "boom":
            raise ValueError("bug in a handler")
        handled.append(item)

    loop = EventLoop(dispatch)
    loop.post("boom")
    loop.post("next")
    loop.call_later(0.05, lambda: handled.append("timer"))
    loop.call_later(0.1, loop.stop)
    loop.run()
    assert handled == ["next", "timer"]


def _ask(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(path)
        client.sendall(line)
        return json.loads(client.makefile("rb").readline())


def test_control_server_busy_when_every_slot_waits_and_late_replies_are_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "MAX_CLIENTS", 2)
    monkeypatch.setattr(control, "REPLY_TIMEOUT_S", 2.0)
    held: list[control.ControlRequest] = []  # the "loop" holds requests unanswered until `answer_now`
    answer_now: list[bool] = []

    def post(request: control.ControlRequest) -> None:
        if answer_now:
            request.reply({"ok": True, "cmd": request.body["cmd"]})
        else:
            held.append(request)

    server = control.ControlServer(str(tmp_path / "control.sock"), post)
    server.open()
    try:
        waiting = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for client in waiting:
            client.connect(server.path)
            client.sendall(b'{"cmd": "status"}\n')
        wait_until(lambda: len(held) == 2, 2, what="both requests posted")
        assert _ask(server.path, b'{"cmd": "status"}\n') == {"ok": False, "error": "busy"}
        for client in waiting:  # the loop's reply is overdue: answered all the same
            client.settimeout(5)
            assert json.loads(client.makefile("rb").readline())["error"] == "the daemon did not answer in time"
            client.close()
        for request in held:  # too late, from another thread, twice: ignored, nothing breaks
            late = threading.Thread(target=lambda request=request: [request.reply({"ok": True}) for _ in range(2)])
            late.start()
            late.join()
        answer_now.append(True)
        assert _ask(server.path, b'{"cmd": "version"}\n') == {"ok": True, "cmd": "version"}
    finally:
        server.close()
    assert not os.path.exists(server.path)


def test_replay_store_keeps_monotonic_deadlines_only_within_the_boot_that_wrote_them(tmp_path: Path) -> None:
    store = ReplayStore(str(tmp_path), boot_id="boot-1")
    store.load()
    store.remember("a", 1500.0, held_until=7200.5)
    store.close()
    assert ReplayStore(str(tmp_path), boot_id="boot-1").load() == {"a": (1500.0, 7200.5)}
    assert ReplayStore(str(tmp_path), boot_id="boot-2").load() == {"a": (1500.0, None)}  # after a reboot


def test_replay_store_takes_a_short_write_as_not_stored(tmp_path: Path) -> None:
    store = ReplayStore(str(tmp_path))
    store.load()
    store.remember("a", 1500.0)

    class NearlyFull:
        """The journal's file when the file system has room for only a few more bytes."""

        def __init__(self, real) -> None:  # noqa: ANN001
            self.real = real

        def write(self, data: bytes) -> int:
            return self.real.write(data[:3])

        def fileno(self) -> int:
            return self.real.fileno()

        def close(self) -> None:
            self.real.close()

    store._handle = NearlyFull(store._handle)  # noqa: SLF001 - the one way to shorten a write on demand
    with pytest.raises(OSError, match="only 3 of"):
        store.remember("b", 1600.0)
    store.remember("c", 1700.0)  # rewrites the torn journal
    store.close()
    assert ReplayStore(str(tmp_path)).load() == {"a": (1500.0, None), "c": (1700.0, None)}


def test_an_unreadable_replay_journal_is_never_rewritten(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    store = ReplayStore(str(tmp_path))
    store.path.write_text("old-command 9999999999.000\n")
    real_read_text = Path.read_text

    def io_error(path: Path, *args, **kwargs) -> str:  # noqa: ANN002, ANN003
        if path == store.path:
            raise OSError(5, "Input/output error")
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", io_error)
    assert store.load() == {}
    for index in range(600):  # enough forgotten lines that a readable journal would be compacted
        store.remember(f"x{index}", 2000.0, forget=(f"x{index - 1}",) if index else ())
    store.close()
    monkeypatch.undo()
    assert "old-command" in store.path.read_text()  # the ids it could not read were not erased
