"""The aiohttp app in-process, through aiohttp's test client (pytest-aiohttp)."""

import pytest

from services.httpbin.app import create_app
from tests.unit.cases import CASES, IDS


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(str(tmp_path / "httpbin.sqlite3")))


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_shared_endpoints(client, case):
    response = await client.get("/httpbin" + case.path)
    case.check(response.status, response.headers, await response.read(), "httpbin")


async def test_request_id_is_echoed_on_errors_too(client):
    response = await client.get("/httpbin/io?ms=x", headers={"X-Request-ID": "rid-3"})
    assert response.status == 400 and response.headers["X-Request-ID"] == "rid-3"


async def test_wrong_method_is_405_with_allow(client):
    response = await client.post("/httpbin/json")
    assert response.status == 405
    assert response.headers["Allow"] == "OPTIONS, GET, HEAD"
    assert response.headers["Content-Type"].startswith("application/problem+json")


async def test_server_header(client):
    response = await client.get("/httpbin/plaintext")
    assert "aiohttp" in response.headers["Server"] and response.headers["Date"].endswith("GMT")
