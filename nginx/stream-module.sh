#!/bin/sh
# Writes the file nginx.conf includes to load nginx's stream module: a load_module line where the module is
# dynamic (Debian's builds: libnginx-mod-stream), nothing where it is built in (nginx.org's images).
# One rule for both modes: deploy/render.py runs it on the host (native), nginx/Dockerfile in the image.
#   usage: stream-module.sh OUTPUT      (exit 1, saying what to install, when the module is missing)
set -eu
out=${1:?usage: stream-module.sh OUTPUT}
configure=$(nginx -V 2>&1)
case "$configure" in
  *--with-stream=dynamic*)
    modules=$(printf '%s\n' "$configure" | tr ' ' '\n' | sed -n 's/^--modules-path=//p')
    module="${modules:-/usr/lib/nginx/modules}/ngx_stream_module.so"
    if [ ! -e "$module" ]; then
      echo "nginx's stream module is missing ($module): apt-get install libnginx-mod-stream" >&2
      exit 1
    fi
    line="load_module $module;" ;;
  *--with-stream*) line="" ;;
  *) echo "this nginx was built without the stream module" >&2; exit 1 ;;
esac
mkdir -p "$(dirname "$out")"
printf '%s\n' "$line" > "$out"
