"""Load: Locust scenarios for the whole stack and the worker-class / framework comparison harness."""
