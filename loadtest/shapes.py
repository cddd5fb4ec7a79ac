"""Step load: add LOAD_STEP_USERS users every LOAD_STEP_SECONDS, up to LOAD_STEP_MAX, hold, then stop.
Use it beside the locustfile: locust -f loadtest/locustfile.py,loadtest/shapes.py ..."""

from __future__ import annotations

import os

from locust import LoadTestShape

from loadtest.stepping import steps


class StepLoadShape(LoadTestShape):
    """10 → 200 users in steps by default; each step lasts LOAD_STEP_SECONDS (default 30)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = steps(int(os.environ.get("LOAD_STEP_START", "10")), int(os.environ.get("LOAD_STEP_USERS", "10")),
                            int(os.environ.get("LOAD_STEP_MAX", "200")))
        self.seconds = float(os.environ.get("LOAD_STEP_SECONDS", "30"))

    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // self.seconds)
        if step >= len(self.counts):
            return None  # done
        users = self.counts[step]
        return users, max(users / 2, 1.0)  # spawn each step within about two seconds
