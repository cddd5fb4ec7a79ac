"""stack/topology.py's scale: SCALE parsed, remembered, and every rendered config following it."""

from __future__ import annotations

import configparser

import pytest

from deploy.render import nginx_conf, supervisord_conf, zone
from stack.topology import HTTP_SERVICES, MAX_INSTANCES, Site, format_scale, parse_scale, service


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


def test_monitoring_comes_from_the_environment_else_from_the_last_up(tmp_path):
    assert Site.from_env({"STACK_VAR": str(tmp_path)}).monitoring is False
    (tmp_path / "monitoring").write_text("1\n")
    assert Site.from_env({"STACK_VAR": str(tmp_path)}).monitoring is True
    assert Site.from_env({"STACK_VAR": str(tmp_path), "MONITORING": "0"}).monitoring is False
    with pytest.raises(ValueError, match="MONITORING"):
        Site.from_env({"STACK_VAR": str(tmp_path), "MONITORING": "yes"})


def test_prometheus_scrapes_every_instance_of_the_scale_and_runs_only_with_monitoring(tmp_path):
    """Native: each instance's own address, at whatever SCALE says; Compose: Docker's DNS for each service's name
    (every replica). supervisor gets Prometheus and the exporter only with MONITORING=1, after nginx."""
    from deploy import monitoring
    from stack.topology import NGINX_EXPORTER, PROMETHEUS, PROMETHEUS_PREFIX

    site = Site(net="127.0.31", var=tmp_path, scale={"web": 3}, monitoring=True)
    jobs = {job["job_name"]: job for job in monitoring.config("native", site)["scrape_configs"]}
    assert set(jobs) == {s.name for s in HTTP_SERVICES} | {"nginx", "prometheus"}
    for entry in site.http_services:
        (targets,) = jobs[entry.name]["static_configs"]
        assert targets["targets"] == list(site.instances(entry).values())
    assert len(jobs["web"]["static_configs"][0]["targets"]) == 3
    assert jobs["nginx"]["static_configs"][0]["targets"] == [f"127.0.31.{NGINX_EXPORTER.octet}:{NGINX_EXPORTER.port}"]
    assert jobs["prometheus"]["metrics_path"] == f"{PROMETHEUS_PREFIX}/metrics"
    compose = {job["job_name"]: job for job in monitoring.config("compose")["scrape_configs"]}
    for entry in HTTP_SERVICES:
        assert compose[entry.name]["dns_sd_configs"] == [
            {"names": [entry.name], "type": "A", "port": entry.port, "refresh_interval": "4s"}]
    rules = [rule["record"] for group in monitoring.rules()["groups"] for rule in group["rules"]]
    assert "job:http_request_duration_seconds:p99_30s" in rules and "job:http_request_errors:rate30s" in rules

    programs = configparser.ConfigParser(interpolation=None)
    programs.read_string(supervisord_conf(site))
    prometheus = programs[f"program:{PROMETHEUS.name}"]
    assert f"--web.listen-address=127.0.31.{PROMETHEUS.octet}:{PROMETHEUS.port}" in prometheus["command"]
    assert int(prometheus["priority"]) > int(programs["program:nginx"]["priority"])
    assert f"program:{NGINX_EXPORTER.name}" in programs
    without = configparser.ConfigParser(interpolation=None)
    without.read_string(supervisord_conf(Site(net="127.0.31", var=tmp_path)))
    assert f"program:{PROMETHEUS.name}" not in without and f"program:{NGINX_EXPORTER.name}" not in without
