"""Step-load arithmetic, apart from Locust so it can be imported anywhere (Locust patches on import)."""

from __future__ import annotations


def steps(start: int, step: int, maximum: int) -> list[int]:
    """User counts of each step: start, start+step, ..., maximum."""
    counts, users = [], start
    while users < maximum:
        counts.append(users)
        users += step
    return [*counts, maximum]
