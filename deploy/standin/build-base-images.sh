#!/usr/bin/env bash
# Builds stand-in base images from Debian packages, for machines that reach Debian's mirror and PyPI
# but no container registry (our CI). The service Dockerfiles take them through their build args:
#   PYTHON_IMAGE=stack-standin/python:3   (Debian trixie's python3, with `python` and venv, like python:3.x-slim)
#   NGINX_IMAGE=stack-standin/nginx:1.30-stream  (Debian sid's nginx: upstream `server ... resolve` needs
#                                                >= 1.27.3; with its stream module, libnginx-mod-stream)
#   POSTGRES_IMAGE=stack-standin/postgres:17    (Debian trixie's postgresql-17, with the official postgres
#                                                image's interface: POSTGRES_USER, POSTGRES_DB,
#                                                POSTGRES_PASSWORD_FILE, PGDATA; STORE=postgres)
#   PROMETHEUS_IMAGE=stack-standin/prometheus:trixie  (Debian's prometheus, run like prom/prometheus: the binary
#                                                     as entrypoint, data in /prometheus; MONITORING=1)
#   NGINX_EXPORTER_IMAGE=stack-standin/nginx-exporter:trixie  (Debian's prometheus-nginx-exporter, run like
#                                                     nginx/nginx-prometheus-exporter; MONITORING=1)
# The mirror's sid snapshot may carry an expired Release date, hence Check-Valid-Until=false.
# curl is in the nginx image because the official nginx image ships it (its healthcheck uses it).
# The host's CA bundle is copied in so pip inside builds trusts the same TLS proxy the host does.
# Usage: eval "$(deploy/standin/build-base-images.sh)"   (as root; stdout is one `export` line, progress on stderr)
set -euo pipefail

suite=${STANDIN_SUITE:-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
base_tag=stack-standin/debian:$suite
python_tag=stack-standin/python:3
nginx_tag=stack-standin/nginx:1.30-stream
postgres_tag=stack-standin/postgres:17
prometheus_tag=stack-standin/prometheus:trixie
exporter_tag=stack-standin/nginx-exporter:trixie
ca_bundle=/etc/ssl/certs/ca-certificates.crt

have() { "$docker" image inspect "$1" >/dev/null 2>&1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$ca_bundle" "$ctx/ca-certificates.crt"
# The images on top of the Debian base are independent and mostly wait on the mirror: they build at once.
builds=()
context() {  # context NAME: a build context of its own, with the CA bundle
  mkdir -p "$ctx/$1" && cp "$ctx/ca-certificates.crt" "$ctx/$1/" && echo "$ctx/$1"
}
build() {  # build TAG CONTEXT, in the background
  (
    if "$docker" build -q -t "$1" "$2" >"$2/build.log" 2>&1; then
      echo "built $1" >&2
    else
      tail -20 "$2/build.log" >&2 && echo "failed to build $1" >&2 && exit 1
    fi
  ) &
  builds+=($!)
}

if ! have "$base_tag"; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$ctx/debootstrap.log" 2>&1 \
    || { tail -20 "$ctx/debootstrap.log"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$docker" import - "$base_tag" >/dev/null
  rm -rf "$rootfs"
  echo "built $base_tag" >&2
fi

if ! have "$python_tag"; then
  dir=$(context python)
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base_tag
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/python3 /usr/local/bin/python
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
  build "$python_tag" "$dir"
fi

if ! have "$nginx_tag"; then
  dir=$(context nginx)
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base_tag
RUN echo 'deb $mirror sid main' > /etc/apt/sources.list.d/sid.list \
 && printf 'Package: *\nPin: release a=unstable\nPin-Priority: 100\n' > /etc/apt/preferences.d/sid \
 && apt-get -o Acquire::Check-Valid-Until=false update \
 && apt-get install -y --no-install-recommends -t unstable nginx libnginx-mod-stream curl \
 && rm -rf /var/lib/apt/lists/* && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE
  build "$nginx_tag" "$dir"
fi

if ! have "$postgres_tag"; then
  dir=$(context postgres)
  # The official image's entrypoint contract, minimally: a cluster made on first start from the environment,
  # reachable from other containers with a password, then the command (postgres) runs as the image's user.
  cat >"$dir/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
  initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" --pwfile="$POSTGRES_PASSWORD_FILE" \
    --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ -n "${POSTGRES_DB:-}" ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec "$@"
ENTRYPOINT
  chmod 755 "$dir/docker-entrypoint.sh"  # COPY keeps the mode (the legacy builder has no --chmod)
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base_tag
RUN mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update && apt-get install -y --no-install-recommends postgresql-17 \
 && rm -rf /var/lib/apt/lists/* && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/17/bin:\$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
USER postgres
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
DOCKERFILE
  build "$postgres_tag" "$dir"
fi

if ! have "$prometheus_tag"; then
  dir=$(context prometheus)
  # The official image's shape: prometheus as the entrypoint (flags only in `command:`), promtool beside it
  # (the healthcheck), an unprivileged user owning /prometheus (the data volume starts as the image's copy).
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base_tag
RUN apt-get update && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* && install -d -o nobody -g nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
DOCKERFILE
  build "$prometheus_tag" "$dir"
fi

if ! have "$exporter_tag"; then
  dir=$(context exporter)
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $base_tag
RUN apt-get update && apt-get install -y --no-install-recommends prometheus-nginx-exporter \
 && rm -rf /var/lib/apt/lists/*
USER nobody
ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]
DOCKERFILE
  build "$exporter_tag" "$dir"
fi

failed=0
for pid in "${builds[@]}"; do wait "$pid" || failed=1; done
[ "$failed" -eq 0 ] || exit 1

echo "export PYTHON_IMAGE=$python_tag NGINX_IMAGE=$nginx_tag POSTGRES_IMAGE=$postgres_tag" \
  "PROMETHEUS_IMAGE=$prometheus_tag NGINX_EXPORTER_IMAGE=$exporter_tag"
