"""The two ways a console action fails, mapped to the CLI's exit codes."""

from __future__ import annotations


class ConsoleError(Exception):
    exit_code = 1

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class Refused(ConsoleError):
    """The action was understood but cannot be done now (not initialised, broker unreachable...)."""

    exit_code = 1


class BadInput(ConsoleError):
    """The operator's input is wrong (bad CSV, unknown site, bad URL); nothing was changed."""

    exit_code = 2


class InvalidFields(BadInput):
    """Bad input in several named fields at once (a dashboard form shows each next to its field)."""

    def __init__(self, fields: dict[str, str]) -> None:
        messages = list(fields.values())
        super().__init__(messages[0], messages[1:])
        self.fields = fields
