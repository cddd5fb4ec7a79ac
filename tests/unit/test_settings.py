"""stack/settings.py: each service's settings read from an environment once, refused when unusable, and passed to
its app factory, which then behaves by them (no module constant, no import-time read)."""

import pytest

from services.httpbin.app import create_app as create_httpbin
from services.web.app import create_app as create_web
from stack.settings import WEEK_S, HttpbinSettings, WebSettings


def test_the_environment_becomes_settings_and_unset_or_empty_keeps_the_default():
    assert WebSettings.from_env({}) == WebSettings() and WebSettings().session_ttl_s == WEEK_S
    web = WebSettings.from_env({"WEB_SESSION_TTL_SECONDS": "60", "WEB_COOKIE_SECURE": "1", "WEB_SERVER": "granian"})
    assert (web.session_ttl_s, web.cookie_secure, web.server) == (60, True, "granian")
    assert HttpbinSettings.from_env({"HTTPBIN_MAX_BINS": "", "STACK_INSTANCE": ""}) == HttpbinSettings()
    httpbin = HttpbinSettings.from_env({"HTTPBIN_MAX_BINS": "3", "REDIRECT_HOSTS": " Example.org, ,b.example "})
    assert httpbin.max_bins == 3 and httpbin.redirect_hosts == {"example.org", "b.example"}


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_a_setting_a_service_cannot_use_stops_it_naming_the_variable(value):
    with pytest.raises(SystemExit, match="HTTPBIN_BIN_TTL_SECONDS"):
        HttpbinSettings.from_env({"HTTPBIN_BIN_TTL_SECONDS": value})
    with pytest.raises(SystemExit, match="WEB_SESSION_TTL_SECONDS"):
        WebSettings.from_env({"WEB_SESSION_TTL_SECONDS": value})


def test_an_unknown_wsgi_server_stops_web_at_start_instead_of_failing_its_requests():
    with pytest.raises(SystemExit, match="WEB_SERVER='tomcat' is none of gunicorn"):
        WebSettings.from_env({"WEB_SERVER": "tomcat"})


def test_web_follows_the_settings_it_was_given(tmp_path):
    credentials = {"email": "s@example.com", "password": "correct horse"}
    for secure in (False, True):
        app = create_web({"TESTING": True, "DATABASE": str(tmp_path / f"web-{secure}.sqlite3")},
                         WebSettings(session_ttl_s=90, cookie_secure=secure))
        client = app.test_client()
        client.post("/web/signup", json=credentials)
        cookie = client.post("/web/login", json=credentials).headers["Set-Cookie"]
        assert "Max-Age=90" in cookie and ("; Secure" in cookie) == secure, cookie  # plain HTTP here
        app.extensions["store"].database.close()


async def test_httpbin_follows_the_settings_it_was_given(aiohttp_client, tmp_path):
    settings = HttpbinSettings(max_bins=1, redirect_hosts=frozenset({"allowed.example"}), instance="7")
    client = await aiohttp_client(create_httpbin(str(tmp_path / "httpbin.sqlite3"), settings))
    assert (await client.put("/httpbin/bins/one", json={"a": 1})).status == 201
    assert (await client.put("/httpbin/bins/two", json={"a": 2})).status == 507  # past max_bins
    allowed = await client.get("/httpbin/redirect-to", params={"url": "http://allowed.example/x"},
                               allow_redirects=False)
    refused = await client.get("/httpbin/redirect-to", params={"url": "http://other.example/x"},
                               allow_redirects=False)
    assert allowed.status == 302 and allowed.headers["Location"] == "http://allowed.example/x"
    assert refused.status == 400
    assert (await (await client.get("/httpbin/hostname")).json())["instance"] == "7"
