#!/usr/bin/env bash
# Native mode needs Debian's nginx and its stream module, and Debian's postgresql for STORE=postgres. The lessons and tests use a few standard network
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
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "[setup] native mode needs: ${missing[*]}" >&2
echo "[setup] install them with:  sudo apt-get install ${missing[*]}" >&2
echo "[setup] (Compose mode works without them when a Docker engine answers.)" >&2
