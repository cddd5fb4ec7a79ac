#!/bin/sh
# Keeps the edge config this image's nginx can run: with HTTP/3 (listen ... quic) when nginx was built with
# http_v3_module, else the same config without it (rendered beside it by nginx/Dockerfile's render stage).
# Writes one line saying which to DIR/http3.txt, which `make up` prints. Native mode asks `nginx -V` the same
# question in deploy/render.py (nginx_has_http3).
#   usage: http3.sh DIR      (DIR holds nginx.conf and nginx-tcp.conf; nginx.conf is what nginx runs)
set -eu
dir=${1:?usage: http3.sh DIR}
configure=$(nginx -V 2>&1)
version=$(printf '%s\n' "$configure" | sed -n 's/^nginx version: //p')
case " $(printf '%s' "$configure" | tr '\n' ' ') " in
  *" --with-http_v3_module "*)
    rm "$dir/nginx-tcp.conf"
    echo "HTTP/3: on, over QUIC on the TLS port's number in UDP ($version has http_v3_module)" > "$dir/http3.txt" ;;
  *)
    mv "$dir/nginx-tcp.conf" "$dir/nginx.conf"
    echo "HTTP/3: off ($version was built without http_v3_module); HTTPS and HTTP/2 over TCP only" \
      > "$dir/http3.txt" ;;
esac
cat "$dir/http3.txt"
