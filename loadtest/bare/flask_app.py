"""A bare Flask hello world: the reference for web's own overhead (same gunicorn config)."""

import os

if os.environ.get("WEB_WORKER_CLASS", "gevent").startswith("gevent"):
    from gevent import monkey

    monkey.patch_all()

from flask import Flask, jsonify  # noqa: E402

app = Flask(__name__)


@app.get("/bare/plaintext")
def plaintext() -> tuple[str, int, dict]:
    return "Hello, World!", 200, {"Content-Type": "text/plain"}


@app.get("/bare/json")
def hello_json():  # noqa: ANN201
    return jsonify(message="Hello, World!")
