"""What goes into the core (events) and what comes out of it (effects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.core.led import LedPattern


class Unhandled(TypeError):
    """An event the core, or an effect the daemon, has no handler for: a programming error."""


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
    receipt: str = ""


@dataclass(frozen=True)
class PublishAcked:
    """The broker acknowledged a publish that asked for a receipt (only those are reported)."""

    receipt: str


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


@dataclass(frozen=True)
class CommandStored:
    """The answer to RememberCommand: the id is on disk (ok), or could not be written (detail)."""

    command_id: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class SelftestCheckDone:
    """A self-test probe's outcome: {"ok": True|False|None, "detail": str, ...}."""

    name: str
    outcome: dict[str, Any]


# --- effects ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    topic: str
    payload: dict[str, Any]
    retain: bool = False
    # When set, the broker's acknowledgement comes back as PublishAcked(receipt) (or PublishDenied).
    receipt: str = ""


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
    microphone_live: bool = False  # the gain the encoder starts with (muted unless the site may speak)


@dataclass(frozen=True)
class SetMicrophone:
    """Whether the site may be heard: the uplink's microphone gain, without restarting the encoder,
    and the optional on-air LED. Emitted whenever it changes, derived from the floor."""

    live: bool


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
class DuckProgram:
    """`audio.echo = duck`: the program quieter (by `audio.duck_db`) while the site speaks, so the
    microphone picks up less of it; back to normal when it listens again."""

    ducked: bool


@dataclass(frozen=True)
class RememberCommand:
    """A command id that must survive a restart until it expires (replay protection), and the ids
    that have expired since. Answered at once, before anything else, with CommandStored: the core
    acts on the command only once its id is on disk."""

    command_id: str
    expires_at: float
    forget: tuple[str, ...] = ()
    held_until: float | None = None  # monotonic deadline, meaningful within this boot only


@dataclass(frozen=True)
class NotifyStatus:
    text: str


@dataclass(frozen=True)
class RunProbes:
    """Run these self-test probes off the loop; each answers with a SelftestCheckDone event."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class ProbeCamera:
    """The camera's self-test: encode for `seconds` into nothing, off the loop; answered with
    SelftestCheckDone("camera", ...) by the camera backend itself."""

    seconds: float


@dataclass(frozen=True)
class SelftestDone:
    """A self-test finished: whoever asked for it locally gets this as the answer."""

    result: dict[str, Any]
    lines: tuple[str, ...]
    language: str


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


# Every event the core takes and every effect it gives: the dispatch tables on both sides are
# checked against these, so a new type cannot be dropped silently.
EVENTS = (
    BrokerConnected, BrokerDisconnected, MessageReceived, PublishDenied, PublishAcked, ButtonDown, ButtonUp,
    MediaStatus, HealthReport, TelemetryDue, CheckpointDue, ProvisionRejected, SelftestCheckDone, CommandStored,
)
EFFECTS = (
    Publish, SetLed, ShowScreen, StartUplink, StopUplink, StartProgram, StopProgram, SetMicrophone,
    DuckProgram, RememberCommand, NotifyStatus, RunProbes, ProbeCamera, SelftestDone, SaveUptime, Log,
)
Event = (
    BrokerConnected | BrokerDisconnected | MessageReceived | PublishDenied | PublishAcked | ButtonDown | ButtonUp
    | MediaStatus | HealthReport | TelemetryDue | CheckpointDue | ProvisionRejected | SelftestCheckDone
    | CommandStored
)
Effect = (
    Publish | SetLed | ShowScreen | StartUplink | StopUplink | StartProgram | StopProgram | SetMicrophone
    | DuckProgram | RememberCommand | NotifyStatus | RunProbes | ProbeCamera | SelftestDone | SaveUptime | Log
)
