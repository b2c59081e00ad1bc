"""LED patterns as data: a cycle of (lit, seconds) steps that a panel adapter plays."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LedPattern:
    name: str
    steps: tuple[tuple[bool, float], ...]

    @property
    def period_s(self) -> float:
        return sum(seconds for _, seconds in self.steps)

    def lit_at(self, t: float) -> bool:
        """Whether the LED is lit `t` seconds into the pattern (patterns repeat forever)."""
        if len(self.steps) == 1:
            return self.steps[0][0]
        offset = t % self.period_s
        for lit, seconds in self.steps:
            if offset < seconds:
                return lit
            offset -= seconds
        return self.steps[-1][0]


OFF = LedPattern("off", ((False, 1.0),))
ON = LedPattern("on", ((True, 1.0),))
# Broker unreachable: one short blip every 3 s, visible but clearly different from "meeting available".
BLIP = LedPattern("blip", ((True, 0.1), (False, 2.9)))
SLOW_BLINK = LedPattern("slow_blink", ((True, 0.5), (False, 0.5)))
FAST_BLINK = LedPattern("fast_blink", ((True, 0.1), (False, 0.1)))
DOUBLE_BLINK = LedPattern("double_blink", ((True, 0.15), (False, 0.15), (True, 0.15), (False, 1.55)))
# A raised hand (the floor requested): mostly lit like "in the meeting", with a quick double flicker
# every 1.4 s. Nothing else is mostly lit and flickering, so it reads as "waiting for my turn".
REQUESTED = LedPattern("requested", ((True, 1.0), (False, 0.12), (True, 0.12), (False, 0.12)))
# The self-test's pattern: every step from dark to steady, so a technician sees the LED work.
TEST = LedPattern("test", ((True, 1.0), (False, 0.5), (True, 0.1), (False, 0.1), (True, 0.1), (False, 0.7)))

PATTERNS = {pattern.name: pattern for pattern in (OFF, ON, BLIP, SLOW_BLINK, FAST_BLINK, DOUBLE_BLINK, REQUESTED, TEST)}
