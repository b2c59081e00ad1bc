"""The display (real libvlc, headless) plays only rebuilt program URLs and reports without stream keys."""

from __future__ import annotations

import logging

import pytest

from appliance.core.io import MediaStatus


@pytest.mark.parametrize("url", [" srt://127.0.0.1:9", "srt://127.0.0.1:9\x00?passphrase=topsecret789",
                                 "srt://127.0.0.1:9?mode=listener&passphrase=topsecret789", "file:///etc/passwd"])
def test_a_program_url_the_core_would_refuse_fails_at_once(display, recorder, url: str) -> None:
    """VLC never opens it: `failed` at once instead of `buffering` and retries against the raw text."""
    display.start_program(url)
    failed = recorder.wait_for(lambda e: isinstance(e, MediaStatus) and e.kind == "program", 3)
    assert failed.status == "failed" and failed.detail.isprintable(), failed
    assert "topsecret789" not in failed.detail
    assert display.url is None


def test_program_reports_hide_passphrases(display, recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="appliance.display")
    display.start_program("SRT://127.0.0.1:9?streamid=read:sid456&passphrase=topsecret789")
    recorder.wait_status("program", "retrying", 10)
    assert display.url == "srt://127.0.0.1:9?streamid=read:sid456&passphrase=topsecret789"  # what VLC is given
    shown = [e.detail for _, e in recorder.events if isinstance(e, MediaStatus)] + caplog.messages
    assert any("passphrase=***" in text for text in shown), shown
    assert not [text for text in shown if "topsecret789" in text or "sid456" in text]
