"""Draw docs/wiring.png: the panel button, its LED and the optional on-air LED on the Pi's 40-pin header.

Development tool (`python -m appliance_dev.wiring_diagram docs/wiring.png`); the pins are the
configuration's defaults (appliance/config.py: panel.button_pin 17, panel.led_pin 27) and the
on-air LED the technician's guide suggests (BCM 22). Regenerated, never hand-edited.
"""

from __future__ import annotations

import sys

from PIL import Image, ImageDraw, ImageFont

from appliance.config import SCHEMA

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
# Physical pin -> (label, colour) for the pins the diagram uses; BCM n is GPIOn.
PHYSICAL = {1: "3V3", 2: "5V", 4: "5V", 6: "GND", 9: "GND", 11: "GPIO17", 13: "GPIO27", 14: "GND", 15: "GPIO22",
            20: "GND", 25: "GND", 30: "GND", 34: "GND", 39: "GND"}
BCM_TO_PHYSICAL = {17: 11, 27: 13, 22: 15}
ONAIR_BCM = 22


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(BOLD if bold else FONT, size)
    except OSError:
        return ImageFont.load_default()


def draw(path: str) -> None:
    button_bcm = SCHEMA["panel"]["button_pin"].default
    led_bcm = SCHEMA["panel"]["led_pin"].default
    image = Image.new("RGB", (1500, 900), "white")
    d = ImageDraw.Draw(image)
    d.text((40, 25), "Panel wiring / Kabel panel: Raspberry Pi 40-pin header, top view",
           fill="black", font=_font(28, True))
    # The header: two columns of 20 pins, odd on the left.
    x0, y0, step = 250, 110, 36
    d.rounded_rectangle((x0 - 30, y0 - 30, x0 + step + 30, y0 + 19 * step + 30), 10, outline="black", width=3, fill="#2e7d32")
    pins = {}
    labels: list[tuple[int, str, int, int, int]] = []
    for number in range(1, 41):
        column, row = (number - 1) % 2, (number - 1) // 2
        cx, cy = x0 + column * step, y0 + row * step
        pins[number] = (cx, cy)
        label = PHYSICAL.get(number, "")
        fill = "black" if label == "GND" else "#ffd54f" if label.startswith("GPIO") else "#e57373" if "V" in label else "#cfd8dc"
        d.ellipse((cx - 11, cy - 11, cx + 11, cy + 11), fill=fill, outline="white", width=2)
        if label:
            labels.append((number, label, column, cx, cy))
    d.text((x0 - 40, y0 + 20 * step + 30), "pin 1 (3V3) at the SD-card end / ujung kartu SD", fill="black", font=_font(16))

    def wire(pin: int, to: tuple[int, int], colour: str) -> None:
        px, py = pins[pin]
        d.line((px, py, px + 260 if px > x0 else px + 300, py), fill=colour, width=5)
        d.line((px + (260 if px > x0 else 300), py, to[0], py, to[0], to[1]), fill=colour, width=5)

    # Parts on the right.
    parts_x = 760
    rows = [("Button / Tombol", button_bcm, None, "#1565c0",
             "GPIO -> button -> GND (the Pi's own pull-up; no resistor) / tanpa resistor"),
            ("Button LED / LED tombol", led_bcm, "330 Ω", "#c62828", "GPIO -> 330 Ω -> LED + (long leg) ; LED - -> GND"),
            ("On-air LED (optional) / pilihan", ONAIR_BCM, "330 Ω", "#6a1b9a",
             "set panel.onair_led_pin = 22 in the image's appliance.toml")]
    grounds = [9, 14, 20]
    for index, (title, bcm, resistor, colour, note) in enumerate(rows):
        top = 150 + index * 240
        d.text((parts_x, top - 40), title + f"  (BCM {bcm}, pin {BCM_TO_PHYSICAL[bcm]})", fill=colour, font=_font(22, True))
        gpio_pin = BCM_TO_PHYSICAL[bcm]
        gx, gy = pins[gpio_pin]
        riser = x0 + step + 110 + index * 14
        d.line((gx + 12, gy, riser, gy), fill=colour, width=5)
        d.line((riser, gy, riser, top + 20), fill=colour, width=5)
        d.line((riser, top + 20, parts_x, top + 20), fill=colour, width=5)
        if resistor:
            d.rectangle((parts_x, top + 8, parts_x + 90, top + 32), outline="black", width=3, fill="#d7ccc8")
            d.text((parts_x + 10, top + 8), resistor, fill="black", font=_font(18))
            d.line((parts_x + 90, top + 20, parts_x + 160, top + 20), fill=colour, width=5)
            d.polygon([(parts_x + 160, top + 2), (parts_x + 160, top + 38), (parts_x + 200, top + 20)], fill="#ef5350",
                      outline="black")
            d.line((parts_x + 200, top + 2, parts_x + 200, top + 38), fill="black", width=4)
            d.text((parts_x + 150, top + 42), "LED (+ long leg / kaki panjang)", fill="black", font=_font(16))
            end = parts_x + 200
        else:
            d.line((parts_x, top + 20, parts_x + 60, top + 20), fill=colour, width=5)
            d.line((parts_x + 60, top + 20, parts_x + 110, top - 5), fill="black", width=5)
            d.ellipse((parts_x + 104, top + 14, parts_x + 116, top + 26), fill="black")
            d.text((parts_x + 40, top + 42), "push button / tombol tekan", fill="black", font=_font(16))
            end = parts_x + 116
        ground = grounds[index]
        sx, sy = pins[ground]
        bus = x0 + step + 150 + index * 16  # beyond the right column's labels
        d.line((end, top + 20, end + 60, top + 20, end + 60, top + 110, bus, top + 110), fill="black", width=4)
        d.line((bus, top + 110, bus, sy, sx + 12, sy), fill="black", width=4)
        d.text((end + 70, top + 95), f"GND (pin {ground})", fill="black", font=_font(18))
        d.text((parts_x, top + 130), note, fill="#37474f", font=_font(17))
    # Pin labels last, on white, so no wire hides them.
    for number, label, column, cx, cy in labels:
        text = f"{number} {label}"
        width = d.textlength(text, font=_font(18))
        tx = cx + 20 if column else cx - 20 - width
        d.rectangle((tx - 3, cy - 12, tx + width + 3, cy + 12), fill="white")
        d.text((tx, cy - 11), text, fill="black", font=_font(18))
    image.save(path)


if __name__ == "__main__":
    draw(sys.argv[1] if len(sys.argv) > 1 else "docs/wiring.png")
