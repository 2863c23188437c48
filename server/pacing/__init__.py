"""Pacing: when each tick's step runs, what it waits for, and each call's place on the clock.

- `clock.py`: the one tick clock every call shares (absolute deadlines, no drift).
- `lead.py`: the lead (the most time a step is given before its deadline) and the rollback
  depth the latency budget needs, fixed at start.
- `step.py`: per tick, the time the coming step needs (recent steps) and the awaited frame:
  what each call must have encoded before the step starts.
- `anchor.py`: per call, its audio against the clock: re-anchoring (drift, lasting delay, audio
  sent ahead), a clock too far off to follow refused, and how much audio `end` may leave owed.
"""
