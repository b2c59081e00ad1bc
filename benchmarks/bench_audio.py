"""Audio: the WebRTC echo canceller (PipeWire 0.3.65 libpipewire-module-echo-cancel) in the all-software
echo rig, next to its peers in the same run: no canceller (`off`, the microphone straight) and the
module with the pass-through library (`null`: the same four streams and ring buffers, no cancelling).

For each configuration one take (appliance_dev.audio_rig.measure): a click in a quiet room (latency),
far-end speech alone (ERLE after 2 s of convergence), then the near-end talker over it (double talk),
then the talker alone. Figures:

- ERLE: the raw mic's echo against what reaches the client, over the same samples (same take), and
  against the `off` and `null` takes' output over the same program speech (cross take);
- double talk: correlation of the client's signal with the clean talker, next to the raw mic's;
- added latency: click, raw mic -> client's source;
- CPU: the canceller's pipewire process, % of one core (/proc), with an estimate for a Raspberry Pi 4.

`python -m benchmarks.bench_audio [--far S] [--double S] [--near S] [--robustness]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from appliance.adapters.echo_delay import measure_echo_delay
from appliance_dev.audio_rig import (
    AEC,
    NULL,
    TUNED,
    TUNED_NS,
    AudioRig,
    Result,
    RoomSpec,
    added_latency,
    calibrated,
    echo_delay,
)
from appliance_dev.audio_rig import measure as measure_take

TARGETS = {"erle_db": 25.0, "double_talk_corr": 0.8, "added_latency_s": 0.020}

# Published yardstick for the CPU estimate: the WebRTC commit that added the extended filter mode
# (webrtc svn r4837, 2013, "Add an extended filter mode to AEC", mirrored e.g. at
# https://gerrit-public.fairphone.software/plugins/gitiles/fp2-dev/platform/external/chromium_org/third_party/webrtc/+/83c5f62d323530e8f393eaa3ad3aaf26ef250b5d)
# measured the same AEC (the one in webrtc-audio-processing 0.3) in % of one core: extended filter
# 0.9 % on a Core i7 Ivy Bridge 2.7 GHz, 1.0 % on a Core i5 Ivy Bridge 1.8 GHz, 5.6 % on a Samsung
# Exynos 5 Dual (Cortex-A15, 1.7 GHz). ARM/x86 ratio: 5.6-6.2. The Pi 4's Cortex-A72 (1.5-1.8 GHz) is
# a later core than the A15; the x86 core here is newer than Ivy Bridge: the two errors go opposite ways.
ARM_OVER_X86 = (5.6 / 1.0, 5.6 / 0.9)


def line(label: str, result: Result, off: Result, null: Result | None) -> str:
    cross_off = off.out_dbfs - result.out_dbfs
    cross_null = f"{null.out_dbfs - result.out_dbfs:5.1f}" if null is not None else "    -"
    cpu = f"{100 * result.cpu_s / result.seconds:4.1f}%" if result.cpu_s is not None else "    -"
    return (f"  {label:<22} {result.erle_db:5.1f}  {cross_off:5.1f}  {cross_null}   "
            f"{result.double_talk_corr:5.3f} ({result.double_talk_corr_mic:5.3f})  {result.near_only_corr:5.3f}   "
            f"{result.added_latency_s * 1000:5.1f}   {cpu}")


def product_delay(rig: AudioRig) -> tuple[float, float]:
    """The self-test's own measurement (adapters/echo_delay.py) in this rig, and how long it took."""
    saved = dict(os.environ)
    os.environ.update(rig.env)
    try:
        started = time.monotonic()
        return measure_echo_delay("rig_speaker", "rig_mic"), time.monotonic() - started
    finally:
        os.environ.clear()
        os.environ.update(saved)


def calibration_rows() -> list[str]:
    """The self-test's echo delay against the rig's reference (one click, read off the same recording)
    and the room's true delay, for rooms like a fast monitor, a TV and a slow TV."""
    rows = []
    for room_delay in (0.020, 0.070, 0.150):
        with AudioRig(room=RoomSpec(delay_s=room_delay)) as rig:
            reference = echo_delay(rig)
            measured, seconds = product_delay(rig)
            rows.append(f"  room {room_delay * 1000:5.1f} ms: self-test {measured * 1000:6.2f} ms in {seconds:.1f} s, "
                        f"rig reference {reference * 1000:6.2f} ms (error {1000 * (measured - room_delay):+.2f} ms)")
    return rows


def run(args: argparse.Namespace) -> tuple[dict[str, Result], float, list[float]]:
    results: dict[str, Result] = {}
    with AudioRig() as rig:
        delay, _ = product_delay(rig)  # as a site's self-test measures it
        configs = [("off", "off"), ("null", NULL), ("webrtc untuned", AEC),
                   ("webrtc tuned", calibrated(TUNED, delay)), ("webrtc tuned + NS", calibrated(TUNED_NS, delay))]
        for label, spec in configs:
            rig.set_canceller(spec)
            results[label] = measure_take(rig, far_s=args.far, double_s=args.double, near_s=args.near)
        # the module's own share of the latency: the null canceller at the webrtc block size
        rig.set_canceller(replace(NULL, node_latency="480/48000"))
        null_480 = added_latency(rig)
    return results, delay, null_480


def robustness(args: argparse.Namespace) -> list[str]:
    """The tuned canceller (play_delay for a 50 ms room) in rooms whose echo comes earlier or later."""
    rows = []
    for room_delay in (0.020, 0.080, 0.120):
        with AudioRig(room=RoomSpec(delay_s=room_delay)) as rig:
            for label, spec in (("play_delay 50 ms", TUNED), ("recalibrated", calibrated(TUNED, echo_delay(rig)))):
                rig.set_canceller(spec)
                result = measure_take(rig, far_s=args.far, double_s=2.0, near_s=1.0)
                rows.append(f"  room {room_delay * 1000:3.0f} ms, {label:<17} ERLE {result.erle_db:5.1f} dB")
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_audio")
    parser.add_argument("--far", type=float, default=10.0, help="far-end-only seconds (ERLE after 2 s)")
    parser.add_argument("--double", type=float, default=6.0, help="double-talk seconds")
    parser.add_argument("--near", type=float, default=3.0, help="near-end-only seconds")
    parser.add_argument("--robustness", action="store_true", help="also rooms with 20/80/120 ms echo delay")
    args = parser.parse_args(argv)

    results, delay, null_480 = run(args)
    room = RoomSpec()
    print(f"echo rig: room {room.delay_s * 1000:.0f} ms, direct {room.direct_db:.0f} dB, RT60 {room.rt60_s:.2f} s "
          f"(echo path {room.gain_db():.1f} dB); program speech ~-23 dBFS, talker -30 dBFS (echo and talker about "
          f"equal), noise -70 dBFS; far end only {args.far:g} s, double talk {args.double:g} s, "
          f"near end only {args.near:g} s; 48 kHz mono")
    print(f"echo delay measured by the self-test's clicks (adapters/echo_delay.py): {delay * 1000:.1f} ms "
          "-> buffer.play_delay")
    print("  config                  ERLE  vs off vs null  double talk (mic)  near   latency  CPU")
    print("                           dB     dB     dB     corr               corr   ms      1 core")
    off, null = results["off"], results["null"]
    for label, result in results.items():
        print(line(label, result, off, null if label not in ("off", "null") else None))
    tuned = results["webrtc tuned"]
    print(f"  ratios, tuned/off: double-talk correlation {tuned.double_talk_corr / off.double_talk_corr:.2f}, "
          f"near-only correlation {tuned.near_only_corr / off.near_only_corr:.2f}; tuned/untuned ERLE "
          f"{tuned.erle_db:.1f}/{results['webrtc untuned'].erle_db:.1f} dB")
    print(f"  latency: the module alone (null at node.latency 480/48000) {1000 * max(null_480):.1f} ms = one graph "
          f"quantum; webrtc adds {1000 * (tuned.added_latency_s - max(null_480)):.1f} ms (noise suppression "
          f"{1000 * (results['webrtc tuned + NS'].added_latency_s - tuned.added_latency_s):+.1f} ms)")
    print(f"  ERLE per second (tuned, from the program's start): {[round(x) for x in tuned.erle_by_second]}")
    for label in ("null", "webrtc tuned", "webrtc tuned + NS"):
        result = results[label]
        if result.cpu_s is not None:
            here = 100 * result.cpu_s / result.seconds
            low, high = (here * ratio for ratio in ARM_OVER_X86)
            print(f"  CPU {label}: {here:.1f}% of one core here (x86); Raspberry Pi 4 estimate {low:.0f}-{high:.0f}% "
                  f"of one of its 4 cores (x {ARM_OVER_X86[0]:.1f}-{ARM_OVER_X86[1]:.1f}: WebRTC's own ARM/x86 "
                  "figures for this AEC, see ARM_OVER_X86)")
    print("the self-test's echo delay measurement (what the tuned canceller is told):")
    for row in calibration_rows():
        print(row)
    if args.robustness:
        print("robustness: tuned canceller when the real echo delay differs from buffer.play_delay")
        for row in robustness(args):
            print(row)

    missed = []
    if tuned.erle_db < TARGETS["erle_db"]:
        missed.append(f"ERLE {tuned.erle_db:.1f} < {TARGETS['erle_db']:g} dB")
    if tuned.double_talk_corr < TARGETS["double_talk_corr"]:
        missed.append(f"double-talk correlation {tuned.double_talk_corr:.2f} < {TARGETS['double_talk_corr']:g} "
                      "(webrtc-audio-processing 0.3's suppressor ducks the talker; the raw mic scores "
                      f"{tuned.double_talk_corr_mic:.2f})")
    if tuned.added_latency_s > TARGETS["added_latency_s"]:
        missed.append(f"added latency {tuned.added_latency_s * 1000:.0f} > {TARGETS['added_latency_s'] * 1000:.0f} ms")
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
