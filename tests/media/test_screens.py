"""Every screen in both languages, checked by what is written on it and where."""

from __future__ import annotations

import datetime as dt

import pytest

from appliance.media import screens

INFO = {"site_name": "Desa Kalibaru Wetan", "title": "Musrenbang Kecamatan 2027", "notice": None,
        "broker_connected": True, "uplink": "idle", "program": "idle", "camera": "ok"}
NOW = dt.datetime(2026, 11, 27, 9, 5)
SIZE = (1280, 720)

# What a person must be able to read on each screen (headline and what to do).
EXPECTED = {
    "idle": ("idle", "idle_button"),
    "meeting_available": ("meeting_available", "press_to_join"),
    "joining": ("joining", "joining_wait"),
    "in_meeting": ("in_meeting", "hold_to_leave_hint"),
    "leaving": ("leaving", "leaving_wait"),
    "broker_unreachable": ("broker_unreachable", "broker_hint"),
    "camera_missing": ("camera_missing", "camera_hint"),
    "program_reconnecting": ("program_reconnecting", "program_hint"),
    "provision_error": ("provision_error", "provision_hint"),
    "not_provisioned": ("not_provisioned", "not_provisioned_hint"),  # shown with no core: see not_provisioned.NotProvisioned
}


def ink_in(image, box, colour):
    """Pixels of the text colour inside the text's box: the words were really drawn there."""
    region = image.crop(box)
    return sum(count for count, rgb in region.getcolors(maxcolors=1 << 22)
               if all(abs(a - b) < 40 for a, b in zip(rgb, colour, strict=False)))


@pytest.mark.parametrize("language", ["id", "en"])
@pytest.mark.parametrize("screen", list(EXPECTED))
def test_every_screen_says_what_it_must(screen, language):
    rendered = screens.render(screen, INFO, language, SIZE, now=NOW, hold_s=3.0)
    written = " ".join(rendered.all_text().split())
    for key in EXPECTED[screen]:
        assert screens.text(language, key, hold="3") in written, (key, written)
    assert INFO["site_name"] in written and "09:05" in written
    if screen in ("meeting_available", "joining"):
        assert INFO["title"] in written
    for words, box, colour in rendered.texts:
        left, top, right, bottom = box
        assert 0 <= left < right <= SIZE[0] and 0 <= top < bottom <= SIZE[1], (words, box)
        assert bottom - top >= SIZE[1] // 30, f"{words!r} is too small to read across a room"
        assert ink_in(rendered.image, box, colour) > 20 * len(words), words
    # No two pieces of text on top of each other.
    boxes = [box for _, box, _ in rendered.texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert rendered.image.getpixel((2, SIZE[1] // 2)) == screens.BACKGROUNDS[screen]


def test_the_core_and_the_screens_agree_on_names():
    assert set(EXPECTED) | {"selftest"} == set(screens.SCREENS)


def test_rejected_site_file_shows_the_first_problem():
    problems = ["site file rejected, previous configuration kept: /boot/firmware/appliance-site.toml",
                "/boot/firmware/appliance-site.toml: site.kind: must be one of kecamatan, desa, other, not 'kota'"]
    written = " ".join(screens.render("provision_error", {**INFO, "problems": problems}, "id", SIZE).all_text().split())
    assert "File situs ditolak" in written
    assert "appliance-site.toml: site.kind: must be one of kecamatan, desa, other, not 'kota'" in written
    assert "/boot/firmware" not in written  # the technician knows where the file is; the key matters


def test_the_two_languages_really_differ():
    for screen in EXPECTED:
        indonesian = screens.render(screen, INFO, "id", SIZE, now=NOW).all_text()
        english = screens.render(screen, INFO, "en", SIZE, now=NOW).all_text()
        assert indonesian != english, screen
    assert "Tekan tombol untuk bergabung" in screens.render("meeting_available", INFO, "id", SIZE).all_text()
    assert "Press the button to join" in screens.render("meeting_available", INFO, "en", SIZE).all_text()


@pytest.mark.parametrize("language", ["id", "en"])
@pytest.mark.parametrize("notice", screens.NOTICES)
def test_notices_are_shown_in_a_band(notice, language):
    rendered = screens.render("idle", {**INFO, "notice": notice}, language, SIZE, now=NOW, hold_s=5)
    band = [(words, box) for words, box, colour in rendered.texts if colour == screens.NOTICE_COLOUR]
    assert " ".join(words for words, _ in band) == screens.text(language, notice, hold="5")
    assert rendered.image.getpixel((2, SIZE[1] - 3)) == screens.NOTICE_BACKGROUND


def test_status_line_tells_connection_and_camera():
    offline = screens.render("broker_unreachable", {**INFO, "broker_connected": False, "camera": "missing"}, "id", SIZE)
    assert "Tidak terhubung ke pusat" in offline.all_text() and "Kamera tidak terdeteksi" in offline.all_text()
    live = screens.render("in_meeting", {**INFO, "uplink": "live"}, "en", SIZE).all_text()
    assert "Connected to the centre" in live and "Camera: on air" in live
    viewer = screens.render("in_meeting", {**INFO, "camera": "disabled"}, "en", SIZE).all_text()
    assert "No camera" in viewer


def test_unknown_screen_falls_back_to_idle():
    assert screens.render("no_such_screen", INFO, "id", SIZE, now=NOW).all_text() == \
        screens.render("idle", INFO, "id", SIZE, now=NOW).all_text()


@pytest.mark.parametrize("language", ["id", "en"])
def test_selftest_card_shows_every_bar_and_says_what_to_look_for(language):
    rendered = screens.render("selftest", {"card": True, "site_name": "Kecamatan Kalibaru"}, language, SIZE)
    assert rendered.all_text().splitlines() == ["Kecamatan Kalibaru", screens.text(language, "card")]
    bar = SIZE[0] // len(screens.CARD_BARS)
    for index, colour in enumerate(screens.CARD_BARS):
        assert rendered.image.getpixel((index * bar + bar // 2, 10)) == colour


def test_selftest_results_fit_one_row_each():
    lines = [f"Check {n}: GAGAL — " + "a very long detail from the check " * 4 for n in range(8)]
    info = {"site_name": "Kalibaru", "title": "Uji mandiri", "headline": "Ada pemeriksaan yang gagal",
            "lines": lines, "hint": "Lampu tombol berkedip pola uji. 30 detik."}
    rendered = screens.render("selftest", info, "id", SIZE, now=NOW)
    rows = [words for words, _, _ in rendered.texts]
    assert rows[2:4] == ["Uji mandiri", "Ada pemeriksaan yang gagal"]
    assert [row.split(":")[0] for row in rows[4:12]] == [f"Check {n}" for n in range(8)]
    assert all(row.endswith("…") for row in rows[4:12]) and rows[-1] == info["hint"]
    boxes = [box for _, box, _ in rendered.texts]
    for i, a in enumerate(boxes):
        assert a[2] <= SIZE[0] and a[3] <= SIZE[1]
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
