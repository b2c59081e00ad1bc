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
class SoftwareReport:
    """The updater at start: the running version, the other slot's, whether this boot is a trial
    of a new slot (tryboot), and the record of an update it rebooted for (None: none pending)."""

    running: str
    other_slot: str | None
    trying: bool = False
    pending: dict[str, Any] | None = None


@dataclass(frozen=True)
class UpdateProgress:
    phase: str
    progress: int


@dataclass(frozen=True)
class UpdateStepDone:
    """One step of an update finished: `download` (fetched and verified), `install`, `commit`."""

    version: str
    step: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ReplyData:
    """What an adapter gathered for a command that answers with data (`logs`, `screenshot`):
    log lines, or bytes with their content type, or why there is nothing."""

    command_id: str
    command_type: str
    lines: tuple[str, ...] | None = None
    data: bytes | None = None
    content_type: str = ""
    error: str = ""


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
class FetchUpdate:
    """Download the bundle (resuming a partial one), check size and sha256, then the bundle's own
    signature, compatible and version (RAUC); answer UpdateProgress and UpdateStepDone("download")."""

    version: str
    url: str
    sha256: str
    size: int
    allow_downgrade: bool = False


@dataclass(frozen=True)
class InstallUpdate:
    """Install the fetched bundle into the other slot; answer UpdateProgress and UpdateStepDone("install")."""

    version: str


@dataclass(frozen=True)
class RebootForUpdate:
    """Keep the record (version, the checks it must pass) on the data partition, then reboot into the
    other slot once (tryboot)."""

    version: str
    required_checks: tuple[str, ...]


@dataclass(frozen=True)
class CommitUpdate:
    """Keep the running (trial) slot: make it the one the firmware boots; answer UpdateStepDone("commit")."""

    version: str


@dataclass(frozen=True)
class RollBackUpdate:
    """Write the reason into the record, then reboot normally: the firmware boots the old slot."""

    version: str
    reason: str


@dataclass(frozen=True)
class ForgetUpdate:
    """The centre has been told how the update ended: drop its record."""

    version: str


@dataclass(frozen=True)
class ReadLogs:
    """Read the device's journal (the appliance's units) since `since` (RFC 3339, or None), at most
    `lines` lines; answer ReplyData."""

    command_id: str
    since: str | None
    lines: int


@dataclass(frozen=True)
class TakeScreenshot:
    """The picture the screen shows now, as JPEG; answer ReplyData."""

    command_id: str


@dataclass(frozen=True)
class RequestReboot:
    """Ask the root reboot unit for a reboot (`normal` or `tryboot`) after `delay_s` (the ack goes first)."""

    kind: str = "normal"
    delay_s: float = 2.0


@dataclass(frozen=True)
class Log:
    level: str  # debug | info | warning | error
    message: str


# Every event the core takes and every effect it gives: the dispatch tables on both sides are
# checked against these, so a new type cannot be dropped silently.
EVENTS = (
    BrokerConnected, BrokerDisconnected, MessageReceived, PublishDenied, PublishAcked, ButtonDown, ButtonUp,
    MediaStatus, HealthReport, TelemetryDue, CheckpointDue, ProvisionRejected, SelftestCheckDone, CommandStored,
    SoftwareReport, UpdateProgress, UpdateStepDone, ReplyData,
)
EFFECTS = (
    Publish, SetLed, ShowScreen, StartUplink, StopUplink, StartProgram, StopProgram, SetMicrophone,
    DuckProgram, RememberCommand, NotifyStatus, RunProbes, ProbeCamera, SelftestDone, SaveUptime, Log,
    FetchUpdate, InstallUpdate, RebootForUpdate, CommitUpdate, RollBackUpdate, ForgetUpdate,
    ReadLogs, TakeScreenshot, RequestReboot,
)
Event = (
    BrokerConnected | BrokerDisconnected | MessageReceived | PublishDenied | PublishAcked | ButtonDown | ButtonUp
    | MediaStatus | HealthReport | TelemetryDue | CheckpointDue | ProvisionRejected | SelftestCheckDone
    | CommandStored | SoftwareReport | UpdateProgress | UpdateStepDone | ReplyData
)
Effect = (
    Publish | SetLed | ShowScreen | StartUplink | StopUplink | StartProgram | StopProgram | SetMicrophone
    | DuckProgram | RememberCommand | NotifyStatus | RunProbes | ProbeCamera | SelftestDone | SaveUptime | Log
    | FetchUpdate | InstallUpdate | RebootForUpdate | CommitUpdate | RollBackUpdate | ForgetUpdate
    | ReadLogs | TakeScreenshot | RequestReboot
)
