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
    "updating": ("updating", "updating_hint"),
}


def ink_in(image, box, colour):
    """Pixels of the text colour inside the text's box: the words were really drawn there."""
    region = image.crop(box)
    return sum(count for count, rgb in region.getcolors(maxcolors=region.width * region.height)
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


@pytest.mark.parametrize("language", ["id", "en"])
def test_the_idle_screen_says_an_update_waits_for_a_free_moment(language):
    waiting = {**INFO, "update": {"version": "1.4.2", "phase": "installed", "progress": 100}}
    written = " ".join(screens.render("idle", waiting, language, SIZE, now=NOW).all_text().split())
    assert screens.text(language, "update_waiting", version="1.4.2") in written
    plain = " ".join(screens.render("idle", INFO, language, SIZE, now=NOW).all_text().split())
    assert "1.4.2" not in plain


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


# The floor in a moderated meeting: a badge on the screens of a joined site, Bahasa Indonesia first.
FLOOR_WORDS = {
    ("id", "listening"): ("Mikrofon mati", "Tekan tombol sekali untuk minta bicara"),
    ("id", "requested"): ("Menunggu giliran bicara", "Tekan lagi untuk batal"),
    ("id", "speaking"): ("Silakan bicara", "Mikrofon menyala"),
    ("en", "listening"): ("Microphone off", "Press the button once to ask to speak"),
    ("en", "requested"): ("Waiting for your turn to speak", "Press again to cancel"),
    ("en", "speaking"): ("Please speak", "Microphone on"),
}
LONG_TITLE = "Musyawarah perencanaan pembangunan kecamatan tahun anggaran 2027 bersama seluruh kepala desa"


def assert_readable(rendered, size):
    """Every text inside the picture, big enough, really drawn, and none on top of another."""
    for words, box, colour in rendered.texts:
        left, top, right, bottom = box
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1], (words, box)
        assert bottom - top >= size[1] // 30, f"{words!r} is too small to read across a room"
        assert ink_in(rendered.image, box, colour) > 20 * len(words), words
    boxes = [box for _, box, _ in rendered.texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def areas(image):
    """Pixels of each colour."""
    return {rgb: count for count, rgb in image.getcolors(maxcolors=image.width * image.height)}


def area_of(image, colour):
    return areas(image).get(colour, 0)


def on_badge(rendered, box):
    """The colour just left of a row of text: the badge it is written on."""
    return rendered.image.getpixel((box[0] - 4, (box[1] + box[3]) // 2))


@pytest.mark.parametrize(("notice", "size"), [(None, SIZE), ("hold_to_leave", SIZE), ("hold_to_leave", (1920, 1080))])
@pytest.mark.parametrize("language", ["id", "en"])
@pytest.mark.parametrize("status", ["listening", "requested", "speaking"])
@pytest.mark.parametrize("screen", ["in_meeting", "program_reconnecting"])
def test_moderated_floor_badge_says_what_the_button_does(screen, status, language, notice, size):
    info = {**INFO, "title": LONG_TITLE, "notice": notice, "floor": status, "floor_mode": "moderated"}
    rendered = screens.render(screen, info, language, size, now=NOW, hold_s=3.0)
    background, colour = screens.FLOOR_COLOURS[status]
    headline, action = FLOOR_WORDS[(language, status)]
    # Both halves on the badge, in its colours: what is happening (big), then what the button does.
    written = " ".join(rendered.all_text().split())
    assert f"{headline} {action}" in written
    rows = {words: (box, text_colour) for words, box, text_colour in rendered.texts}
    for words in (headline, action):
        box, text_colour = rows[words]
        assert text_colour == colour and on_badge(rendered, box) == background, words
    assert rows[headline][0][3] - rows[headline][0][1] >= size[1] // 20, "the floor must read across a hall"
    pixels = areas(rendered.image)
    assert pixels.get(background, 0) > size[0] * size[1] // 20
    for other, (other_background, _) in screens.FLOOR_COLOURS.items():
        if other != status:
            assert pixels.get(other_background, 0) < size[0] * size[1] // 1000, other
    # The rest of the screen is still there, and everything still fits.
    assert screens.text(language, screen) in written
    if screen == "in_meeting":
        assert screens.text(language, "hold_to_leave_hint", hold="3") in written
    else:
        assert screens.text(language, "program_hint") in written
    if notice:
        assert screens.text(language, notice, hold="3") in written
    assert_readable(rendered, size)
    assert rendered.image.getpixel((2, size[1] // 2)) == screens.BACKGROUNDS[screen]


def test_floor_colours_tell_the_statuses_apart():
    speaking, requested, listening = (screens.FLOOR_COLOURS[status][0]
                                      for status in ("speaking", "requested", "listening"))
    assert speaking[0] > 150 and max(speaking[1:]) < 60, "speaking is red, like on air"
    assert requested[0] > 200 and 100 < requested[1] < 200 and requested[2] < 60, "requested is amber"
    assert listening[0] == listening[1] == listening[2], "listening is grey"
    assert requested != screens.NOTICE_BACKGROUND


@pytest.mark.parametrize("language", ["id", "en"])
def test_open_meeting_speaking_is_a_small_indicator_not_a_banner(language):
    info = {**INFO, "floor": "speaking", "floor_mode": "open"}
    rendered = screens.render("in_meeting", info, language, SIZE, now=NOW)
    written = " ".join(rendered.all_text().split())
    please, microphone_on = FLOOR_WORDS[(language, "speaking")]
    assert please not in written and microphone_on in written
    indicator = [box for words, box, _ in rendered.texts if microphone_on in words]
    moderated = screens.render("in_meeting", {**info, "floor_mode": "moderated"}, language, SIZE, now=NOW)
    banner = [box for words, box, _ in moderated.texts if words == please]
    assert len(indicator) == 1 and indicator[0][3] - indicator[0][1] < banner[0][3] - banner[0][1]
    red = screens.FLOOR_COLOURS["speaking"][0]
    assert 0 < area_of(rendered.image, red) < area_of(moderated.image, red) // 2
    assert screens.text(language, "hold_to_leave_hint", hold="3") in written
    assert_readable(rendered, SIZE)


@pytest.mark.parametrize(("language", "words"), [
    ("id", "Mikrofon dimatikan oleh pusat Tekan tombol untuk minta bicara"),
    ("en", "Microphone muted by the centre Press the button to ask to speak")])
def test_open_meeting_listening_means_the_centre_muted_the_site(language, words):
    rendered = screens.render("in_meeting", {**INFO, "floor": "listening", "floor_mode": "open"}, language, SIZE,
                              now=NOW)
    assert words in " ".join(rendered.all_text().split())
    assert FLOOR_WORDS[(language, "listening")][0] not in rendered.all_text()
    assert area_of(rendered.image, screens.FLOOR_COLOURS["listening"][0]) > SIZE[0] * SIZE[1] // 20
    assert_readable(rendered, SIZE)
    requested = screens.render("in_meeting", {**INFO, "floor": "requested", "floor_mode": "open"}, language, SIZE,
                               now=NOW)
    assert " ".join(FLOOR_WORDS[(language, "requested")]) in " ".join(requested.all_text().split())


def test_floor_badge_only_on_a_joined_sites_screens_and_bahasa_first():
    speaking = {**INFO, "floor": "speaking", "floor_mode": "moderated"}
    assert "Silakan bicara" in screens.render("in_meeting", speaking, size=SIZE, now=NOW).all_text()
    assert "Please speak" in screens.render("in_meeting", speaking, "en", SIZE, now=NOW).all_text()
    for screen in ("in_meeting", "program_reconnecting"):
        today = screens.render(screen, INFO, "id", SIZE, now=NOW)
        no_floor = screens.render(screen, {**INFO, "floor": None, "floor_mode": None}, "id", SIZE, now=NOW)
        assert no_floor.all_text() == today.all_text() and no_floor.image.tobytes() == today.image.tobytes()
    for screen in ("idle", "meeting_available", "joining", "leaving", "broker_unreachable", "camera_missing"):
        assert "bicara" not in screens.render(screen, speaking, "id", SIZE, now=NOW).all_text(), screen
