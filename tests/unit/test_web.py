"""The Flask app in-process, through Flask's test client."""

import json
import os
import subprocess
import sys

import pytest

from services.web.app import create_app
from tests.unit.cases import CASES, IDS


@pytest.fixture
def client(tmp_path):
    return create_app({"TESTING": True, "DATABASE": tmp_path / "web.sqlite3"}).test_client()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_shared_endpoints(client, case):
    response = client.get("/web" + case.path)
    case.check(response.status_code, response.headers, response.data, "web")


def test_request_id_is_echoed(client):
    assert client.get("/web/json", headers={"X-Request-ID": "rid-1"}).headers["X-Request-ID"] == "rid-1"


def test_wrong_method_is_405_with_allow(client):
    response = client.post("/web/json")
    assert response.status_code == 405
    assert response.content_type == "application/problem+json"
    assert {"GET", "HEAD", "OPTIONS"} <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_head_has_get_headers_and_no_body(client):
    response = client.head("/web/json")
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Length"] == "27"


def test_stream_is_n_json_lines_from_a_generator_without_a_content_length(client):
    response = client.get("/web/stream/3")
    assert response.status_code == 200 and response.is_streamed and "Content-Length" not in response.headers
    assert [json.loads(line) for line in response.data.splitlines()] == [{"id": i, "service": "web"} for i in range(3)]
    for bad in ("0", "101", "x"):
        assert client.get(f"/web/stream/{bad}").status_code == 400


def test_importing_webs_gunicorn_config_leaves_the_environment_alone():
    """Its metrics directory is made when gunicorn's master starts: a process that only imports the config (the
    config tests do) must not pass PROMETHEUS_MULTIPROC_DIR on to every stack it starts afterwards."""
    code = ("import os; before = dict(os.environ); import services.web.gunicorn_conf; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    assert result.returncode == 0, result.stderr
