"""The fault-injection suite: crashes, reuse across fits, hub faults, hostile files, bad numerics and bad input.

Fast cases run in every CI run; long ones are marked ``slow`` (they run in CI too). docs/RELIABILITY.md lists
each fault, what the library does, the test that proves it and the counts from real runs.
"""

from tests.reliability._hub_fixtures import hub, hub_backoff

__all__ = ["hub", "hub_backoff"]
