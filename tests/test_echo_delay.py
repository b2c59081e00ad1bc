"""The echo delay's arithmetic (adapters/echo_delay.py) on synthetic recordings, and the stored delay
(adapters/echo_canceller.py): the rig tests (tests/audio/) measure it on a real PipeWire graph."""

from __future__ import annotations

import array
import json
import random

import pytest

from appliance.adapters.echo_canceller import load_delay, save_delay
from appliance.adapters.echo_delay import (
    CLICK_GAP_S,
    CLICKS,
    RATE,
    EchoDelayError,
    LostClickError,
    click,
    delay_from_frames,
    measure_echo_delay,
)
from appliance.media.echo_canceller import CALIBRATED_ARGS, UNCALIBRATED_ARGS, module_args


def _frames(delay_s: float, echo_gain: float = 0.3, noise: float = 0.002, drowned: int | None = None,
            jitter_s: tuple[float, ...] = (), lost: int | None = None) -> array.array:
    """(speaker, mic) frames: three clicks on the speaker, their echo on the mic `delay_s` later;
    `lost`: the recorder dropped that click's stretch of frames (both channels: one stream)."""
    rnd = random.Random(3)
    length = int(RATE * (0.2 + CLICKS * CLICK_GAP_S + 0.5))
    speaker = [0.0] * length
    mic = [rnd.gauss(0.0, noise) for _ in range(length)]
    pulse = click()
    for index in range(CLICKS):
        at = int(RATE * (0.2 + index * CLICK_GAP_S))
        late = int(RATE * (delay_s + (jitter_s[index] if index < len(jitter_s) else 0.0)))
        for i, value in enumerate(pulse):
            speaker[at + i] += value
            mic[at + late + i] += echo_gain * value
            mic[at + late + 300 + i] -= 0.4 * echo_gain * value  # a reflection 6 ms later
        if index == drowned:  # a door slams over this echo
            for i in range(at + late - 200, at + late + 400):
                mic[i] += rnd.gauss(0.0, 0.5)
    frames = array.array("f", [0.0] * (2 * length))
    frames[0::2] = array.array("f", speaker)
    frames[1::2] = array.array("f", mic)
    if lost is not None:
        at = int(RATE * (0.2 + lost * CLICK_GAP_S))
        del frames[2 * (at - 100):2 * (at + len(click()) + 100)]
    return frames


@pytest.mark.parametrize("delay_s", [0.0125, 0.0637, 0.150])
def test_the_delay_is_read_to_the_sample(delay_s: float) -> None:
    # to a sample or two (0.04 ms; the canceller holds its figure within -35..+30 ms of the truth)
    assert delay_from_frames(_frames(delay_s)) == pytest.approx(delay_s, abs=2.5 / RATE)


def test_one_drowned_click_is_outvoted_by_the_other_two() -> None:
    assert delay_from_frames(_frames(0.080, drowned=1)) == pytest.approx(0.080, abs=2.5 / RATE)


def test_an_echo_that_never_arrives_is_named() -> None:
    with pytest.raises(EchoDelayError, match="did not reach the microphone"):
        delay_from_frames(_frames(0.080, echo_gain=0.0, noise=0.01))


def test_a_click_the_recorder_lost_is_taken_again() -> None:
    # the speaker channel itself lacks a click: the recorder fell behind (seen under load), not the room
    with pytest.raises(LostClickError, match="only 2 of 3 clicks"):
        delay_from_frames(_frames(0.070, lost=1))
    takes = iter([_frames(0.070, lost=1), _frames(0.070)])
    assert measure_echo_delay("speaker", "mic", take=lambda: next(takes)) == pytest.approx(0.070, abs=2.5 / RATE)


def test_a_recorder_that_keeps_losing_clicks_is_named_after_the_second_take() -> None:
    taken = []

    def take() -> array.array:
        taken.append(1)
        return _frames(0.070, lost=2)

    with pytest.raises(LostClickError, match="recorded from the speaker"):
        measure_echo_delay("speaker", "mic", take=take)
    assert len(taken) == 2


def test_a_drowned_take_is_taken_again_and_a_silent_microphone_named_after_two() -> None:
    # a word or a door over two of the echoes: the second take measures
    takes = iter([_frames(0.080, echo_gain=0.0, noise=0.01), _frames(0.080)])
    assert measure_echo_delay("speaker", "mic", take=lambda: next(takes)) == pytest.approx(0.080, abs=2.5 / RATE)
    # the TV really is not heard: named after the second take, not a third
    taken = []

    def take() -> array.array:
        taken.append(1)
        return _frames(0.080, echo_gain=0.0, noise=0.01)

    with pytest.raises(EchoDelayError, match="did not reach the microphone"):
        measure_echo_delay("speaker", "mic", take=take)
    assert len(taken) == 2


def test_a_muted_output_is_named_after_one_take() -> None:
    taken = []

    def take() -> array.array:
        taken.append(1)
        return array.array("f", [0.0] * (2 * RATE))  # nothing on the speaker's monitor either

    with pytest.raises(EchoDelayError, match="muted"):
        measure_echo_delay("speaker", "mic", take=take)
    assert len(taken) == 1


def test_a_wandering_echo_is_not_a_measurement() -> None:
    with pytest.raises(EchoDelayError, match="not heard clearly"):
        delay_from_frames(_frames(0.080, jitter_s=(0.0, 0.020, 0.045)))


def test_a_muted_output_is_named() -> None:
    silent = array.array("f", [0.0] * (2 * RATE))
    with pytest.raises(EchoDelayError, match="did not reach the speaker"):
        delay_from_frames(silent)


def test_the_delay_survives_a_restart_and_a_bad_file_is_ignored(tmp_path) -> None:  # noqa: ANN001
    assert load_delay(str(tmp_path)) is None
    save_delay(str(tmp_path), 0.0523, "2026-12-02T08:00:00Z")
    assert load_delay(str(tmp_path)) == 0.0523
    assert json.loads((tmp_path / "echo-delay.json").read_text())["measured_at"] == "2026-12-02T08:00:00Z"
    for broken in ("{", '{"delay_s": "soon"}', '{"delay_s": 7}', "[]"):
        (tmp_path / "echo-delay.json").write_text(broken)
        assert load_delay(str(tmp_path)) is None, broken


def test_the_canceller_is_told_the_delay_only_when_it_was_measured() -> None:
    told = module_args(capture_target="mic", playback_target="tv", play_delay_s=0.05)
    untold = module_args(capture_target=None, playback_target=None, play_delay_s=None)
    assert "buffer.play_delay = 2400/48000" in told and 'target.object = "mic"' in told
    assert all(f"{key} = {value}" in told for key, value in CALIBRATED_ARGS)
    assert "play_delay" not in untold and "target.object" not in untold
    assert all(f"{key} = {value}" in untold for key, value in UNCALIBRATED_ARGS)


def test_the_canceller_is_told_whole_10ms_blocks() -> None:
    """webrtc refuses a block of another length: the warm-up would send an unprocessed block uplink."""
    for measured, told in ((0.0646, 2880), (0.0655, 3360), (0.0700, 3360), (0.0031, 0), (0.3999, 19200)):
        assert f"buffer.play_delay = {told}/48000" in module_args(capture_target=None, playback_target=None,
                                                                   play_delay_s=measured), measured
