"""Tables for a person at a terminal, JSON for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from appliance.console.store import is_control

PROBLEM_HEALTH = ("missing", "error", "failed", "retrying")


def print_json(document: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    stream.flush()


def printable(text: str) -> str:
    """`text` with every control character shown as its escape (`\\x1b`, `\\u202e`), never acted on:
    site names are checked on the way in, but states, meetings and events come from the devices."""
    if not any(is_control(char) for char in text):
        return text
    return "".join(char.encode("unicode_escape").decode("ascii") if is_control(char) else char for char in text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return printable(str(value))


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """`columns` = [(key, heading)]; the result ends with a newline."""
    cells = [[heading for _, heading in columns]] + [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=False)).rstrip() for line in cells]
    return "\n".join(lines) + "\n"


def health_summary(health: Any) -> str:
    if not isinstance(health, dict):
        return "-"
    problems = [f"{part} {value}" for part, value in health.items() if value in PROBLEM_HEALTH]
    return ", ".join(problems) if problems else "ok"


class Live:
    """Redraws a block of text in place on a terminal; prints nothing until the end elsewhere."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty()
        self._lines = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        if self._lines:
            self.stream.write(f"\x1b[{self._lines}A\x1b[J")
        self.stream.write(text)
        self.stream.flush()
        self._lines = text.count("\n")

    def clear(self) -> None:
        if self.enabled and self._lines:
            self.stream.write(f"\x1b[{self._lines}A\x1b[J")
            self.stream.flush()
            self._lines = 0
