"""The appliance's screens, drawn with Pillow, in Bahasa Indonesia (default) or English.

Sized relative to the picture height so they read from across a room on any TV: the smallest text
is 1/20 of the height (36 px at 720p), headlines 1/9. `render` returns the picture and every piece
of text with its box, so tests can check what is on screen, not only that something is.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SCREENS = ("idle", "meeting_available", "joining", "in_meeting", "leaving", "broker_unreachable",
           "camera_missing", "program_reconnecting", "selftest", "provision_error", "not_provisioned", "updating")
NOTICES = ("no_meeting", "hold_to_leave", "please_wait", "nothing_to_leave")

TEXTS: dict[str, dict[str, str]] = {
    "id": {
        "idle": "Belum ada rapat",
        "idle_button": "Tombol belum berfungsi sampai ada rapat dari pusat",
        "update_waiting": "Pembaruan perangkat lunak {version} sedang disiapkan; dipasang saat tidak ada rapat",
        "update_trying": "Versi baru {version} sedang diperiksa",
        "updating": "Memperbarui perangkat lunak…",
        "updating_hint": "Jangan cabut listrik. Alat menyala lagi sendiri dalam beberapa menit.",
        "meeting_available": "Rapat tersedia",
        "press_to_join": "Tekan tombol untuk bergabung",
        "joining": "Bergabung ke rapat…",
        "joining_wait": "Mohon tunggu, menyambungkan kamera dan siaran",
        "in_meeting": "Sedang dalam rapat",
        "hold_to_leave_hint": "Tahan tombol {hold} detik untuk keluar",
        "leaving": "Keluar dari rapat…",
        "leaving_wait": "Kamera dimatikan",
        "broker_unreachable": "Tidak terhubung ke pusat",
        "broker_hint": "Periksa kabel jaringan atau internet. Menyambung ulang otomatis.",
        "camera_missing": "Kamera tidak terdeteksi",
        "camera_hint": "Periksa kabel kamera. Rapat tetap bisa ditonton.",
        "program_reconnecting": "Siaran terputus",
        "program_hint": "Menyambung ulang otomatis, tidak perlu keluar dari rapat",
        "connected": "Terhubung ke pusat",
        "disconnected": "Tidak terhubung ke pusat",
        "camera_live": "Kamera: tersiar",
        "camera_off": "Kamera: tidak tersiar",
        "camera_starting": "Kamera: menyambungkan",
        "camera_none": "Tanpa kamera",
        "mark_live": "● KAMERA ANDA TERSIAR",
        "card": "Uji layar: semua warna dan tulisan ini harus terlihat jelas",
        "no_meeting": "Belum ada rapat saat ini",
        "hold_to_leave": "Tahan tombol {hold} detik untuk keluar dari rapat",
        "please_wait": "Mohon tunggu…",
        "nothing_to_leave": "Tidak ada rapat untuk ditinggalkan",
        "provision_error": "File situs ditolak",
        "provision_hint": "Pengaturan lama tetap dipakai. Perbaiki appliance-site.toml di kartu SD "
                          "(periksa dengan appliance check-config), lalu nyalakan ulang.",
        "not_provisioned": "Belum disiapkan",
        "not_provisioned_hint": "Perangkat ini belum punya pengaturan situs yang sah. Salin appliance-site.toml "
                                "yang benar ke partisi boot kartu SD (periksa dengan appliance check-config), "
                                "lalu nyalakan ulang.",
        "not_provisioned_waiting": "Menunggu pengaturan yang sah; tidak perlu menekan tombol",
        "floor_listening": "Mikrofon mati · Tekan tombol sekali untuk minta bicara",
        "floor_requested": "Menunggu giliran bicara · Tekan lagi untuk batal",
        "floor_speaking": "Silakan bicara · Mikrofon menyala",
        "floor_open_listening": "Mikrofon dimatikan oleh pusat · Tekan tombol untuk minta bicara",
        "floor_open_speaking": "● Mikrofon menyala",
    },
    "en": {
        "idle": "No meeting",
        "idle_button": "The button does nothing until the centre starts a meeting",
        "update_waiting": "Software update {version} is being prepared; it is installed when there is no meeting",
        "update_trying": "New version {version} is being checked",
        "updating": "Updating the software…",
        "updating_hint": "Do not unplug the power. The device starts again by itself within a few minutes.",
        "meeting_available": "Meeting available",
        "press_to_join": "Press the button to join",
        "joining": "Joining the meeting…",
        "joining_wait": "Please wait, connecting the camera and the broadcast",
        "in_meeting": "In the meeting",
        "hold_to_leave_hint": "Hold the button for {hold} seconds to leave",
        "leaving": "Leaving the meeting…",
        "leaving_wait": "Camera switched off",
        "broker_unreachable": "Not connected to the centre",
        "broker_hint": "Check the network cable or internet. Reconnecting automatically.",
        "camera_missing": "Camera not detected",
        "camera_hint": "Check the camera cable. You can still watch the meeting.",
        "program_reconnecting": "Broadcast lost",
        "program_hint": "Reconnecting automatically, no need to leave the meeting",
        "connected": "Connected to the centre",
        "disconnected": "Not connected to the centre",
        "camera_live": "Camera: on air",
        "camera_off": "Camera: not on air",
        "camera_starting": "Camera: connecting",
        "camera_none": "No camera",
        "mark_live": "● YOUR CAMERA IS ON AIR",
        "card": "Screen test: every colour and this text must be clearly visible",
        "no_meeting": "There is no meeting right now",
        "hold_to_leave": "Hold the button for {hold} seconds to leave the meeting",
        "please_wait": "Please wait…",
        "nothing_to_leave": "There is no meeting to leave",
        "provision_error": "Site file rejected",
        "provision_hint": "The previous settings stay in use. Fix appliance-site.toml on the SD card "
                          "(check it with appliance check-config), then restart.",
        "not_provisioned": "Not provisioned",
        "not_provisioned_hint": "This device has no valid site settings yet. Copy a correct appliance-site.toml "
                                "to the SD card's boot partition (check it with appliance check-config), "
                                "then restart.",
        "not_provisioned_waiting": "Waiting for valid settings; no need to press the button",
        "floor_listening": "Microphone off · Press the button once to ask to speak",
        "floor_requested": "Waiting for your turn to speak · Press again to cancel",
        "floor_speaking": "Please speak · Microphone on",
        "floor_open_listening": "Microphone muted by the centre · Press the button to ask to speak",
        "floor_open_speaking": "● Microphone on",
    },
}

# Background per screen: calm blue for normal states, green when something is on offer, amber/red for trouble.
BACKGROUNDS = {
    "idle": (16, 36, 64), "meeting_available": (10, 90, 50), "joining": (16, 36, 64),
    "in_meeting": (16, 36, 64), "leaving": (16, 36, 64), "broker_unreachable": (120, 20, 20),
    "camera_missing": (130, 80, 0), "program_reconnecting": (130, 80, 0), "selftest": (40, 40, 40),
    "provision_error": (130, 80, 0), "not_provisioned": (130, 80, 0), "updating": (16, 36, 64),
}
# A TV test card's bars: any missing colour or wrong order shows a cabling or colour-format fault.
CARD_BARS = ((235, 235, 235), (235, 235, 16), (16, 235, 235), (16, 235, 16), (235, 16, 235), (235, 16, 16),
             (16, 16, 235), (16, 16, 16))
TEXT_COLOUR = (255, 255, 255)
NOTICE_BACKGROUND = (250, 210, 40)
NOTICE_COLOUR = (0, 0, 0)
# The floor in a meeting (info["floor"], info["floor_mode"]): a badge on the screens of a joined site.
FLOOR_SCREENS = ("in_meeting", "program_reconnecting")
FLOOR_STATUSES = ("listening", "requested", "speaking")
# (background, text): red "on air" while speaking, amber while waiting for the turn, grey while listening.
FLOOR_COLOURS = {
    "speaking": ((200, 20, 20), (255, 255, 255)),
    "requested": ((255, 150, 0), (0, 0, 0)),
    "listening": ((85, 85, 85), (255, 255, 255)),
}

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")


@dataclass
class Rendered:
    image: Image.Image
    texts: list[tuple[str, tuple[int, int, int, int], tuple[int, int, int]]] = field(default_factory=list)

    def all_text(self) -> str:
        return "\n".join(text for text, _, _ in self.texts)


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in _FONT_DIRS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable fallback


def text(language: str, key: str, **values: Any) -> str:
    table = TEXTS.get(language, TEXTS["id"])
    return table[key].format(**values)


class _Canvas:
    def __init__(self, size: tuple[int, int], background: tuple[int, int, int]) -> None:
        self.width, self.height = size
        self.result = Rendered(Image.new("RGB", size, background))
        self.draw = ImageDraw.Draw(self.result.image)
        self.margin = self.width // 20

    def line(self, words: str, y: int, size_frac: float, bold: bool = False, align: str = "center",
             colour: tuple[int, int, int] = TEXT_COLOUR, wrap: bool = True) -> int:
        """Draw `words` wrapped (or cut short with …) to the width from `y`; return the y below it."""
        face = font(max(12, int(self.height * size_frac)), bold)
        for row in self._wrap(words, face) if wrap else [self._cut(words, face)]:
            left, top, right, bottom = self.draw.textbbox((0, 0), row, font=face)
            x = {"center": (self.width - (right - left)) // 2, "left": self.margin,
                 "right": self.width - self.margin - (right - left)}[align]
            self.draw.text((x - left, y - top), row, font=face, fill=colour)
            self.result.texts.append((row, (x, y, x + right - left, y + bottom - top), colour))
            y += int((bottom - top) * 1.35)
        return y

    def box(self, y0: int, y1: int, colour: tuple[int, int, int]) -> None:
        self.draw.rectangle((0, y0, self.width, y1), fill=colour)

    def badge(self, parts: list[tuple[str, float]], y: int, colours: tuple[tuple[int, int, int], ...],
              full: bool = True) -> int:
        """Rows of bold words (each part wrapped, at its own size) on a rounded box of their own colour,
        as wide as the text area (or as the words when not `full`), centred; return the y below it."""
        background, colour = colours
        rows = []
        for words, size_frac in parts:
            face = font(max(12, int(self.height * size_frac)), True)
            rows.extend((row, face) for row in self._wrap(words, face))
        pitch = [sum(face.getmetrics()) for _, face in rows]  # even rows, whatever the letters
        pad = self.height // 50
        widest = max(int(self.draw.textlength(row, font=face)) for row, face in rows)
        half = min(self.width // 2 - self.margin // 2, widest // 2 + 2 * pad)
        x0, x1 = (self.margin // 2, self.width - self.margin // 2) if full else (self.width // 2 - half,
                                                                                 self.width // 2 + half)
        bottom = y + 2 * pad + sum(pitch)
        self.draw.rounded_rectangle((x0, y, x1, bottom), radius=2 * pad, fill=background)
        y += pad
        for (row, face), step in zip(rows, pitch, strict=True):
            left, top, right, bottom_ = self.draw.textbbox((0, 0), row, font=face)
            x = (self.width - (right - left)) // 2
            self.draw.text((x - left, y), row, font=face, fill=colour)
            self.result.texts.append((row, (x, y + top, x + right - left, y + bottom_), colour))
            y += step
        return bottom

    def _cut(self, words: str, face: Any) -> str:
        limit = self.width - 2 * self.margin
        if self.draw.textlength(words, font=face) <= limit:
            return words
        while words and self.draw.textlength(words + "…", font=face) > limit:
            words = words[:-1]
        return words + "…"

    def _wrap(self, words: str, face: Any) -> list[str]:
        limit = self.width - 2 * self.margin
        rows: list[str] = []
        current = ""
        for word in words.split():
            trial = f"{current} {word}".strip()
            if current and self.draw.textlength(trial, font=face) > limit:
                rows.append(current)
                current = word
            else:
                current = trial
        return rows + ([current] if current else [])


def render(screen: str, info: dict[str, Any], language: str = "id", size: tuple[int, int] = (1280, 720),
           now: dt.datetime | None = None, hold_s: float = 3.0) -> Rendered:
    """Draw one screen. Unknown screens fall back to idle so the TV never shows nothing."""
    if screen not in SCREENS:
        screen = "idle"
    t = lambda key, **values: text(language, key, **values)  # noqa: E731
    hold = f"{hold_s:g}"
    canvas = _Canvas(size, BACKGROUNDS[screen])
    height = canvas.height
    now = now or dt.datetime.now()

    if screen == "selftest":
        return _selftest(canvas, info, t, now)
    if screen == "not_provisioned":
        return _not_provisioned(canvas, info, t, now)
    # Top bar: which office this is and the time, on every screen.
    canvas.line(info.get("site_name") or "", height // 25, 0.06, bold=True, align="left")
    canvas.line(now.strftime("%H:%M"), height // 25, 0.06, bold=True, align="right")

    floor = _floor_words(screen, info, t)
    headline = {"idle": t("idle"), "meeting_available": t("meeting_available"), "joining": t("joining"),
                "in_meeting": t("in_meeting"), "leaving": t("leaving"),
                "broker_unreachable": t("broker_unreachable"), "camera_missing": t("camera_missing"),
                "program_reconnecting": t("program_reconnecting"), "provision_error": t("provision_error"),
                "updating": t("updating")}[screen]
    # With a floor badge to fit, everything starts higher.
    y = canvas.line(headline, int(height * (0.14 if floor else 0.24)), 0.11, bold=True)
    title = info.get("title")
    if title and screen in ("meeting_available", "joining", "in_meeting", "program_reconnecting"):
        # One row (cut short with …) when the floor badge needs the room.
        y = canvas.line(f"“{title}”", y + height // 40, 0.07, wrap=not floor)
    if floor:
        # What a joined site must know in a moderated meeting: can it be heard, and what the button
        # does now; big, on its own colour. In an open meeting speaking is the normal state: small.
        words, colours, big = floor
        parts = words.split(" · ")  # the status on its own row, then what to do
        sizes = [0.085] + [0.06] * (len(parts) - 1) if big else [0.05]
        y = canvas.badge(list(zip(parts, sizes, strict=True)), y + height // 30, colours, full=big)
    body = {
        "idle": [t("idle_button")],
        "meeting_available": [t("press_to_join")],
        "joining": [t("joining_wait")],
        "in_meeting": [t("hold_to_leave_hint", hold=hold)],
        "leaving": [t("leaving_wait")],
        "broker_unreachable": [t("broker_hint")],
        "camera_missing": [t("camera_hint")],
        "program_reconnecting": [t("program_hint")],
        "provision_error": [t("provision_hint")],
        "updating": [t("updating_hint")],
    }[screen]
    update = info.get("update") or {}
    if screen == "idle" and update.get("phase") in ("downloading", "verifying", "installing", "installed", "trying"):
        key = "update_trying" if update["phase"] == "trying" else "update_waiting"
        body = [*body, t(key, version=update.get("version", ""))]
    big_body = screen == "meeting_available"  # the one thing to do: make it impossible to miss
    for words in body:
        # A little smaller beside a floor badge, so the hint fits one row (still above the 1/20 minimum).
        y = canvas.line(words, y + height // 30, 0.09 if big_body else 0.055 if floor else 0.06, bold=big_body)
    if screen == "provision_error":
        # The technician's first clue: the first problem as appliance check-config words it, file name cut off.
        for problem in (info.get("problems") or [])[1:2]:
            y = canvas.line(problem.rsplit("/", 1)[-1], y + height // 60, 0.045)

    # Status bar: connection to the centre and the camera, so staff can tell what is wrong.
    notice = info.get("notice")
    status_y = int(height * (0.80 if notice else 0.88))
    connected = t("connected") if info.get("broker_connected") else t("disconnected")
    canvas.line(f"{connected}   ·   {_camera_words(info, t)}", status_y, 0.05)
    if notice in NOTICES:
        canvas.box(int(height * 0.88), height, NOTICE_BACKGROUND)
        canvas.line(t(notice, hold=hold), int(height * 0.905), 0.055, bold=True, colour=NOTICE_COLOUR)
    return canvas.result


def _selftest(canvas: _Canvas, info: dict[str, Any], t: Any, now: dt.datetime) -> Rendered:
    """The self-test's test card, or its progress and results (texts come from the self-test)."""
    height = canvas.height
    if info.get("card"):
        width = canvas.width / len(CARD_BARS)
        for index, colour in enumerate(CARD_BARS):
            canvas.draw.rectangle((int(index * width), 0, int((index + 1) * width), height), fill=colour)
        canvas.box(int(height * 0.36), int(height * 0.64), (0, 0, 0))
        y = canvas.line(info.get("site_name") or "", int(height * 0.39), 0.07, bold=True)
        canvas.line(t("card"), y, 0.05)
        return canvas.result
    canvas.line(info.get("site_name") or "", height // 25, 0.06, bold=True, align="left")
    canvas.line(now.strftime("%H:%M"), height // 25, 0.06, bold=True, align="right")
    y = canvas.line(info.get("title") or "", int(height * 0.15), 0.07)
    y = canvas.line(info.get("headline") or "", y + height // 60, 0.09, bold=True)
    lines = info.get("lines") or []
    # One row each, sized to fit above the hint: a technician reads this close up.
    size = min(0.05, (0.86 * height - y) / height / max(1, len(lines)) / 1.7)
    for words in lines:
        y = canvas.line(words, y + height // 100, size, align="left", wrap=False)
    if info.get("hint"):
        canvas.line(info["hint"], int(height * 0.9), 0.05)
    return canvas.result


def _not_provisioned(canvas: _Canvas, info: dict[str, Any], t: Any, now: dt.datetime) -> Rendered:
    """No valid configuration, so no site runs: what to do, and the first problems as
    appliance check-config words them (file names cut to the base name)."""
    height = canvas.height
    canvas.line(info.get("site_name") or "", height // 25, 0.06, bold=True, align="left")
    canvas.line(now.strftime("%H:%M"), height // 25, 0.06, bold=True, align="right")
    y = canvas.line(t("not_provisioned"), int(height * 0.18), 0.11, bold=True)
    y = canvas.line(t("not_provisioned_hint"), y + height // 30, 0.055)
    for problem in (info.get("problems") or [])[:3]:
        y = canvas.line(problem.rsplit("/", 1)[-1], y + height // 60, 0.045, wrap=False)
    canvas.line(t("not_provisioned_waiting"), int(height * 0.9), 0.05)
    return canvas.result


def _floor_words(screen: str, info: dict[str, Any], t: Any) \
        -> tuple[str, tuple[tuple[int, int, int], tuple[int, int, int]], bool] | None:
    """The floor badge for this screen: its words, colours and whether it is big; None = no badge."""
    status = info.get("floor")
    if screen not in FLOOR_SCREENS or status not in FLOOR_STATUSES:
        return None
    if info.get("floor_mode") == "open" and status != "requested":
        # Open meeting: speaking is the normal state (a small indicator), listening means the centre muted us.
        return (t("floor_open_speaking"), FLOOR_COLOURS["speaking"], False) if status == "speaking" else \
            (t("floor_open_listening"), FLOOR_COLOURS["listening"], True)
    return t(f"floor_{status}"), FLOOR_COLOURS[status], True


def _camera_words(info: dict[str, Any], t: Any) -> str:
    camera, uplink = info.get("camera"), info.get("uplink")
    if camera == "disabled":
        return t("camera_none")
    if camera in ("missing", "error"):
        return t("camera_missing")
    if uplink == "live":
        return t("camera_live")
    if uplink in ("starting", "retrying"):
        return t("camera_starting")
    return t("camera_off")


def banner(words: str, width: int) -> Image.Image:
    """A strip with the site's name, burnt into the test camera picture."""
    height = max(24, width // 18)
    image = Image.new("RGBA", (width, height), (0, 0, 0, 170))
    draw = ImageDraw.Draw(image)
    face = font(int(height * 0.7), bold=True)
    left, top, right, bottom = draw.textbbox((0, 0), words, font=face)
    draw.text(((width - (right - left)) // 2 - left, (height - (bottom - top)) // 2 - top), words,
              font=face, fill=(255, 255, 255, 255))
    return image


def badge(words: str, height: int) -> Image.Image:
    """The "your camera is on air" badge laid over the program: white on red, readable on any picture."""
    face = font(int(height * 0.6), bold=True)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), words, font=face)
    pad = height // 3
    image = Image.new("RGBA", (right - left + 2 * pad, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, image.width - 1, height - 1), radius=height // 4, fill=(200, 20, 20, 235))
    draw.text((pad - left, (height - (bottom - top)) // 2 - top), words, font=face, fill=(255, 255, 255, 255))
    return image
