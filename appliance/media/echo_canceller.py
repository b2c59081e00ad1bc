"""The echo canceller's settings: what the daemon runs (`adapters/echo_canceller.py`) and what the
test rig measures (`appliance_dev/audio_rig.py`) come from here, so the figures in
docs/performance.md are the product's.

The canceller is PipeWire's `libpipewire-module-echo-cancel` with WebRTC's audio processing
(libwebrtc-audio-processing 0.3 on Debian 12 / Pi OS bookworm), run as its own small PipeWire client
process (`pipewire -c <conf>`) between the engine's microphone and speaker:

    program (VLC) -> ECHO_SINK -> [webrtc: the reference] -> the speaker
    the microphone -> [webrtc: echo removed] -> ECHO_SOURCE -> the uplink (ffmpeg)

What the rig found (PipeWire 0.3.65, the numbers in docs/performance.md):
- The canceller must be told the echo's delay (`buffer.play_delay` = speaker -> microphone, measured
  per site by the self-test): 42 dB told, 11-15 dB untold. It holds >= 25 dB while the true delay is
  within about -35..+30 ms of the one told. webrtc's delay-agnostic mode corrects only after 15 s and
  did not find a 120 ms echo in 45 s: it is only the fallback before the first measurement.
- Extended filter on; high-pass on (off, the filter diverged); noise suppression off (+6 ms latency
  and a slightly distorted talker); gain control off (the uplink's level stays the microphone's).
"""

from __future__ import annotations

from appliance.media.audio_route import ECHO_SINK, ECHO_SOURCE

RATE = 48000
WEBRTC_LIBRARY = "aec/libspa-aec-webrtc"
# Told the delay: the site's measured echo path.
CALIBRATED_ARGS = (("webrtc.extended_filter", "true"), ("webrtc.delay_agnostic", "false"),
                   ("webrtc.high_pass_filter", "true"), ("webrtc.noise_suppression", "false"),
                   ("webrtc.gain_control", "false"))
# Before the first measurement: webrtc looks for the delay itself (slowly; 11-15 dB on the rig).
UNCALIBRATED_ARGS = (("webrtc.extended_filter", "true"), ("webrtc.delay_agnostic", "true"),
                     ("webrtc.high_pass_filter", "true"), ("webrtc.noise_suppression", "false"),
                     ("webrtc.gain_control", "false"))
# The echo delays the self-test accepts as a measurement (an HDMI TV adds up to ~150 ms of its own).
MIN_DELAY_S = 0.0
MAX_DELAY_S = 0.4


def module_args(*, capture_target: str | None, playback_target: str | None, play_delay_s: float | None,
                aec_args: tuple[tuple[str, str], ...] | None = None, library: str = WEBRTC_LIBRARY,
                rate: int = RATE, node_latency: str | None = None, max_buffer_ms: int | None = None,
                source_name: str = ECHO_SOURCE, sink_name: str = ECHO_SINK) -> str:
    """The module's arguments in PipeWire's config syntax. A target of None lets the session
    manager link that side to the engine's default device."""
    if aec_args is None:
        aec_args = CALIBRATED_ARGS if play_delay_s is not None else UNCALIBRATED_ARGS
    aec = " ".join(f"{key} = {value}" for key, value in aec_args)
    # Never moved to another device: a capture that fell over to the default source could be the
    # canceller's own output (a loop); the daemon restarts the canceller on the right one instead.
    capture = 'node.name = "rapat_ec_capture" node.dont-reconnect = true'
    playback = 'node.name = "rapat_ec_playback" node.dont-reconnect = true'
    if capture_target:
        capture += f' target.object = "{capture_target}"'
    if playback_target:
        playback += f' target.object = "{playback_target}"'
    lines = [f"library.name = {library}",
             f"aec.args = {{ {aec} }}" if aec else "",
             f"audio.rate = {rate}",
             "audio.channels = 1",
             "audio.position = [ MONO ]",
             f"node.latency = {node_latency}" if node_latency else "",
             f"buffer.play_delay = {play_delay_samples(play_delay_s, rate)}/{rate}" if play_delay_s else "",
             f"buffer.max_size = {max_buffer_ms}" if max_buffer_ms else "",
             f"capture.props = {{ {capture} }}",
             f'source.props = {{ node.name = "{source_name}" node.description = "Echo-cancelled microphone" }}',
             f'sink.props = {{ node.name = "{sink_name}" node.description = "Echo-cancel sink" }}',
             f"playback.props = {{ {playback} }}"]
    return "\n".join(line for line in lines if line)


def play_delay_samples(play_delay_s: float, rate: int = RATE) -> int:
    """The delay in whole 10 ms blocks (webrtc's block), nearest to the one measured.

    Why: while its reference fills up, module-echo-cancel 0.3.65 runs webrtc on the rest of the block
    that completes the delay. With a delay that is not whole blocks (64.6 ms: 3101 samples) that rest is
    259 samples, webrtc refuses it ("Buffers must be multiples of 10ms") and the block goes out
    unprocessed, uninitialised memory, into the uplink: at every start of the program's playback. The
    rounding costs at most 5 ms; the canceller holds >= 25 dB within about -35..+30 ms.
    """
    block = rate // 100
    return round(play_delay_s * 100) * block


# The whole configuration of the canceller's process: a PipeWire client holding only the module.
_CLIENT_CONF = """# Written by the appliance daemon; rewritten at every canceller start.
context.properties = {{ log.level = 2 }}
context.spa-libs = {{ audio.convert.* = audioconvert/libspa-audioconvert support.* = support/libspa-support }}
context.modules = [
  {{ name = libpipewire-module-rt args = {{ }} flags = [ ifexists nofail ] }}
  {{ name = libpipewire-module-protocol-native }}
  {{ name = libpipewire-module-client-node }}
  {{ name = libpipewire-module-adapter }}
  {{ name = libpipewire-module-echo-cancel
    args = {{
{args}
    }}
  }}
]
"""


def client_conf(args: str) -> str:
    return _CLIENT_CONF.format(args="\n".join(f"      {line}" for line in args.splitlines()))
