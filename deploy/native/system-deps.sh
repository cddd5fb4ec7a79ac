#!/usr/bin/env bash
# Native mode needs Debian's nginx and its stream module (and make compare likes wrk). As root on Debian/Ubuntu they are installed here;
# anyone else is told exactly what to install. Compose mode needs neither, so this only warns.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
# wrk is optional: make compare measures with it too when it is there.
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
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
