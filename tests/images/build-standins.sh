#!/usr/bin/env bash
# Builds stand-ins for the third-party images the examples and tests use, from Debian's
# packages (debootstrap), tagged with the upstream names, as docker-archive files in the
# cache. Nothing is ever pulled. Prints the archive paths, one per line, on stdout.
#
#   build-standins.sh [NAME...]    NAME: debian postgres redis rabbitmq toolbox (default: all)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/lib.sh
source "$here/../cluster/lib.sh"
require_root
# Progress goes to stderr; stdout carries only the archive paths.
exec 3>&1 1>&2

IMAGES_CACHE="$TRIBUTARY_CACHE/images"
DEBS_CACHE="$TRIBUTARY_CACHE/debootstrap-debs"
mkdir -p "$IMAGES_CACHE" "$DEBS_CACHE"

# The recipe of every stand-in: image reference, Debian packages, user (uid 999 like the
# upstream images), entrypoint script, default command, exposed ports, writable folders.
declare -A REF PKGS USERNAME ENTRY CMD PORTS DIRS ENVS
REF[debian]="debian:bookworm-slim"
PKGS[debian]="ca-certificates"
REF[postgres]="postgres:15"
PKGS[postgres]="postgresql-15 ca-certificates"
USERNAME[postgres]=postgres
ENTRY[postgres]=postgres-entrypoint.sh
CMD[postgres]='["postgres"]'
PORTS[postgres]="5432"
DIRS[postgres]="/var/lib/postgresql /var/lib/postgresql/data /var/run/postgresql"
ENVS[postgres]="PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REF[redis]="redis:7"
PKGS[redis]="redis-server"
USERNAME[redis]=redis
ENTRY[redis]=redis-entrypoint.sh
CMD[redis]='["redis-server"]'
PORTS[redis]="6379"
DIRS[redis]="/data"
REF[rabbitmq]="rabbitmq:3-management"
PKGS[rabbitmq]="rabbitmq-server"
USERNAME[rabbitmq]=rabbitmq
ENTRY[rabbitmq]=rabbitmq-entrypoint.sh
CMD[rabbitmq]='["rabbitmq-server"]'
PORTS[rabbitmq]="5672 15672 15692"
DIRS[rabbitmq]="/var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq /etc/rabbitmq/conf.d"
REF[toolbox]="tributary/toolbox:0.1.0"
PKGS[toolbox]="curl ca-certificates postgresql-client amqp-tools redis-tools mosquitto-clients jq"
USERNAME[toolbox]=nonroot

ALL=(debian postgres redis rabbitmq toolbox)

recipe_key() {
  local name=$1
  {
    echo "${REF[$name]} ${PKGS[$name]} ${USERNAME[$name]:-} ${CMD[$name]:-} ${PORTS[$name]:-} ${DIRS[$name]:-} ${ENVS[$name]:-}"
    [ -n "${ENTRY[$name]:-}" ] && cat "$here/standins/${ENTRY[$name]}"
    sed -n '/^build_rootfs()/,$p' "$0"
  } | sha256sum | cut -c1-12
}

build_rootfs() {
  local name=$1 rootfs=$2
  rm -rf "$rootfs"
  local include
  include=$(tr ' ' ',' <<<"${PKGS[$name]}")
  step "debootstrap $name (${PKGS[$name]})"
  debootstrap --variant=minbase --cache-dir="$DEBS_CACHE" --include="$include" \
    bookworm "$rootfs" >"$IMAGES_CACHE/$name-debootstrap.log" 2>&1 || {
    tail -n 20 "$IMAGES_CACHE/$name-debootstrap.log" >&2
    die "debootstrap of $name failed"
  }
  # Services are not started in an image; drop caches and docs to keep it small.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  local user=${USERNAME[$name]:-}
  if [ -n "$user" ]; then
    if chroot "$rootfs" id -u "$user" >/dev/null 2>&1; then
      chroot "$rootfs" groupmod -g 999 "$user"
      chroot "$rootfs" usermod -u 999 -g 999 "$user"
    else
      chroot "$rootfs" groupadd -g 999 "$user"
      chroot "$rootfs" useradd -u 999 -g 999 -d /home/"$user" -m -s /bin/bash "$user"
    fi
  fi
  local d
  for d in ${DIRS[$name]:-}; do
    mkdir -p "$rootfs$d"
    chroot "$rootfs" chown -R 999:999 "$d"
  done
  if [ "$name" = rabbitmq ]; then
    echo '[rabbitmq_management,rabbitmq_prometheus].' >"$rootfs/etc/rabbitmq/enabled_plugins"
    echo 'loopback_users.guest = false' >"$rootfs/etc/rabbitmq/conf.d/00-standin.conf"
    chroot "$rootfs" chown -R 999:999 /etc/rabbitmq
  fi
  if [ -n "${ENTRY[$name]:-}" ]; then
    install -m 0755 "$here/standins/${ENTRY[$name]}" "$rootfs/usr/local/bin/docker-entrypoint.sh"
  fi
}

build_image() {
  local name=$1
  local ref=${REF[$name]}
  local key archive
  key=$(recipe_key "$name")
  archive="$IMAGES_CACHE/standin-$name-$key.tar"
  if [ -s "$archive" ]; then
    echo "$archive" >&3
    return 0
  fi
  local rootfs="$TRIBUTARY_CACHE/rootfs/$name"
  build_rootfs "$name" "$rootfs"
  local c
  c=$(buildah from scratch)
  # buildah extracts a local tar archive given to `add`.
  (cd "$rootfs" && tar --numeric-owner -cf "$rootfs.tar" .)
  buildah add "$c" "$rootfs.tar" / >/dev/null
  rm -f "$rootfs.tar"
  local args=(--env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" --env LANG=C.UTF-8)
  local e p
  for e in ${ENVS[$name]:-}; do args+=(--env "$e"); done
  for p in ${PORTS[$name]:-}; do args+=(--port "$p"); done
  if [ -n "${USERNAME[$name]:-}" ]; then args+=(--user 999:999); fi
  if [ -n "${ENTRY[$name]:-}" ]; then
    args+=(--entrypoint '["/usr/local/bin/docker-entrypoint.sh"]' --cmd "${CMD[$name]}")
  else
    args+=(--cmd '["bash"]')
  fi
  buildah config "${args[@]}" --label "org.opencontainers.image.description=Tributary stand-in for $ref, built from Debian packages" "$c"
  buildah commit -q "$c" "$ref" >/dev/null
  buildah rm "$c" >/dev/null
  rm -f "$archive.tmp"
  buildah push -q "$ref" "docker-archive:$archive.tmp:$ref"
  mv "$archive.tmp" "$archive"
  rm -rf "$rootfs"
  # Drop archives of older recipes of this image.
  find "$IMAGES_CACHE" -maxdepth 1 -name "standin-$name-*.tar" ! -name "$(basename "$archive")" -delete
  step "stand-in $ref built ($(du -h "$archive" | cut -f1))"
  echo "$archive" >&3
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
for n in "${names[@]}"; do
  [ -n "${REF[$n]:-}" ] || die "unknown stand-in '$n' (known: ${ALL[*]})"
  build_image "$n"
done
