"""deploy/topology.py's scale: SCALE parsed, remembered, and every rendered config following it."""

from __future__ import annotations

import configparser

import pytest

from deploy.render import nginx_conf, supervisord_conf, zone
from deploy.topology import HTTP_SERVICES, MAX_INSTANCES, Site, format_scale, parse_scale, service


def test_scale_is_name_equals_count_separated_by_spaces_or_commas():
    assert parse_scale("web=3 catalog=2,httpbin=1") == {"web": 3, "catalog": 2, "httpbin": 1}
    assert parse_scale("  ") == {}
    assert format_scale({"web": 3}) == "web=3 catalog=2 httpbin=2"


@pytest.mark.parametrize("spec", ["web", "web=0", f"web={MAX_INSTANCES + 1}", "dns=2", "nginx=2", "web=x",
                                  "web=3;rm -rf /"])
def test_a_bad_scale_says_what_is_wrong(spec):
    with pytest.raises(ValueError, match="SCALE entry"):
        parse_scale(spec)


def test_scale_comes_from_the_environment_else_from_the_last_up(tmp_path):
    assert Site.from_env({"STACK_VAR": str(tmp_path)}).scale == {}
    (tmp_path / "scale").write_text("web=3 catalog=2 httpbin=2\n")
    assert Site.from_env({"STACK_VAR": str(tmp_path)}).scale == {"web": 3, "catalog": 2, "httpbin": 2}
    assert Site.from_env({"STACK_VAR": str(tmp_path), "SCALE": "web=4"}).scale == {"web": 4}


def test_every_native_config_lists_every_instance_of_the_scale(tmp_path):
    site = Site(net="127.0.31", var=tmp_path, scale={"web": 4, "httpbin": 1})
    web = site.scaled(service("web"))
    assert web.instances == 4 and web.instance_names() == ["web-1", "web-2", "web-3", "web-4"]
    assert site.instance_addresses(web) == ["127.0.31.11", "127.0.31.111", "127.0.31.112", "127.0.31.113"]
    # nginx balances over all four, and over httpbin's one
    text = nginx_conf("native", site)
    for address in site.instance_addresses(web):
        assert f"server {address}:{web.port} " in text
    assert text.count(f":{service('httpbin').port} max_fails") == 1
    # the DNS zone answers the four, and each by its own name
    records = zone("native", site)["records"]
    assert records["web"] == site.instance_addresses(web) and records["web-4"] == "127.0.31.113"
    assert records["httpbin"] == "127.0.31.13" and "httpbin-1" not in records
    # one supervisor program per instance, its entry the same whatever the scale (a changed entry restarts it)
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(supervisord_conf(site))
    programs = {section.removeprefix("program:") for section in conf.sections() if section.startswith("program:")}
    assert {"web-1", "web-4", "catalog-1", "catalog-2", "httpbin"} <= programs and "httpbin-1" not in programs
    default = configparser.ConfigParser(interpolation=None)
    default.read_string(supervisord_conf(Site(net="127.0.31", var=tmp_path)))
    assert dict(conf["program:web-1"]) == dict(default["program:web-1"])
    assert f"--bind 127.0.31.113:{web.port}" in conf["program:web-4"]["command"]


def test_the_default_scale_is_the_registrys():
    site = Site()
    assert site.http_services == HTTP_SERVICES


def test_make_up_with_a_bad_scale_stops_before_starting_anything(monkeypatch, tmp_path):
    from deploy.stack import main

    monkeypatch.setenv("STACK_VAR", str(tmp_path))
    monkeypatch.setenv("SCALE", "web=0")
    with pytest.raises(SystemExit, match="1 to"):
        main(["up", "--mode", "native"])
    assert not (tmp_path / "run").exists()
