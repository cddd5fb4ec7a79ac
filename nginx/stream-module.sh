#!/bin/sh
# Writes the file the Compose config includes to load nginx's stream module: a load_module line where the
# module is dynamic (Debian's builds: libnginx-mod-stream), nothing where it is built in (nginx.org's images).
# Run inside the nginx image: by nginx/Dockerfile, and by tests/config/test_nginx.py before `nginx -t`.
#   usage: stream-module.sh /etc/stack/modules.conf
set -eu
out=${1:?usage: stream-module.sh OUTPUT}
mkdir -p "$(dirname "$out")"
configure=$(nginx -V 2>&1)
case "$configure" in
  *--with-stream=dynamic*)
    modules=$(printf '%s\n' "$configure" | tr ' ' '\n' | sed -n 's/^--modules-path=//p')
    echo "load_module ${modules:-/usr/lib/nginx/modules}/ngx_stream_module.so;" > "$out" ;;
  *) : > "$out" ;;
esac
