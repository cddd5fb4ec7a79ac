#!/usr/bin/env bash
# Native mode needs Debian's nginx and its stream module, Debian's postgresql for STORE=postgres, and prometheus
# with prometheus-nginx-exporter for MONITORING=1; `make test` (this script's `test` argument) also needs chromium
# and chromium-driver for the landing page's browser test. The lessons and tests use a few standard network
# tools as well: dig (DNS), nc and socat (raw TCP/UDP clients), ss (socket states), tcpdump (packet capture);
# make compare likes wrk, and make iolab shows the stack's system calls with strace. As root on Debian/Ubuntu
# they are installed here; anyone else is told exactly what to install. Compose mode needs none of them, so
# this only warns.
set -euo pipefail

missing=()
need() {  # need COMMAND-OR-PATH PACKAGE
  if [[ $1 == /* ]]; then [ -e "$1" ] || missing+=("$2"); else command -v "$1" >/dev/null 2>&1 || missing+=("$2"); fi
}
need /usr/sbin/nginx nginx
need /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream
need dig bind9-dnsutils
need nc netcat-openbsd
need socat socat
need ss iproute2
need tcpdump tcpdump
need wrk wrk
need strace strace
# STORE=postgres: the shared store, started natively from its own data directory (and the tests of both stores).
need /usr/lib/postgresql/15/bin/postgres postgresql
# MONITORING=1: Prometheus and nginx's exporter, started by the stack itself (never as system services).
need prometheus prometheus
need prometheus-nginx-exporter prometheus-nginx-exporter
# `system-deps.sh test` (make test): the landing page is tested in a real browser, Debian's Chromium.
if [ "${1:-}" = test ]; then
  need chromium chromium
  need chromedriver chromium-driver
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # Packages that ship a daemon (postgresql, prometheus, the exporter) must not start it as a system service:
  # the stack starts its own, on its own addresses. policy-rc.d (101: "not now") says so to their install
  # scripts; one already there is left as it is.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 755 "$guard"
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$guard" ] && rm -f "$guard"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-nginx-exporter >/dev/null 2>&1 || true
  fi
  exit 0
fi
echo "[setup] native mode needs: ${missing[*]}" >&2
echo "[setup] install them with:  sudo apt-get install ${missing[*]}" >&2
echo "[setup] (Compose mode works without them when a Docker engine answers.)" >&2
