"""What goes into the core (events) and what comes out of it (effects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.core.led import LedPattern


# --- events -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BrokerConnected:
    pass


@dataclass(frozen=True)
class BrokerDisconnected:
    reason: str


@dataclass(frozen=True)
class MessageReceived:
    topic: str
    payload: bytes
    retained: bool = False


@dataclass(frozen=True)
class PublishDenied:
    topic: str
    reason: str


@dataclass(frozen=True)
class ButtonDown:
    pass


@dataclass(frozen=True)
class ButtonUp:
    pass


@dataclass(frozen=True)
class MediaStatus:
    """The camera uplink or the program player reporting what it is really doing."""

    kind: str  # "uplink" | "program"
    status: str  # uplink: idle|starting|live|retrying|failed; program: idle|buffering|playing|retrying|failed
    detail: str = ""


@dataclass(frozen=True)
class HealthReport:
    component: str  # panel | camera | display | clock
    value: str
    detail: str = ""


@dataclass(frozen=True)
class TelemetryDue:
    sample: dict[str, Any]


@dataclass(frozen=True)
class ProvisionRejected:
    """The provisioning service refused the site file on the boot partition (it kept the old one)."""

    problems: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointDue:
    """Time to place the uptime since the last checkpoint on days, save and republish the ledger."""


# --- effects ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    topic: str
    payload: dict[str, Any]
    retain: bool = False


@dataclass(frozen=True)
class SetLed:
    pattern: LedPattern


@dataclass(frozen=True)
class ShowScreen:
    screen: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartUplink:
    url: str


@dataclass(frozen=True)
class StopUplink:
    pass


@dataclass(frozen=True)
class StartProgram:
    url: str


@dataclass(frozen=True)
class StopProgram:
    pass


@dataclass(frozen=True)
class RememberCommand:
    """An accepted command id that must survive a restart until it expires (replay protection)."""

    command_id: str
    expires_at: float


@dataclass(frozen=True)
class NotifyStatus:
    text: str


@dataclass(frozen=True)
class RunSelftest:
    interactive: bool = False


@dataclass(frozen=True)
class SaveUptime:
    """Persist a ledger checkpoint in one transaction (copies: the core keeps mutating its own)."""

    days: tuple[Any, ...]
    state: Any
    pending: dict[str, float]
    keep: tuple[str, ...]


@dataclass(frozen=True)
class Log:
    level: str  # debug | info | warning | error
    message: str


Event = (
    BrokerConnected | BrokerDisconnected | MessageReceived | PublishDenied | ButtonDown | ButtonUp
    | MediaStatus | HealthReport | TelemetryDue | CheckpointDue | ProvisionRejected
)
Effect = (
    Publish | SetLed | ShowScreen | StartUplink | StopUplink | StartProgram | StopProgram
    | RememberCommand | NotifyStatus | RunSelftest | SaveUptime | Log
)
