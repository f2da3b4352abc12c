#!/usr/bin/env bash
# Provisions haproxy for tests/proxy.rs, which stands it in for docker-socket-proxy
# (itself haproxy with a rules file). Debian's package, via apt-get; nothing is done
# when haproxy is already installed. Installing needs root (or sudo).
set -euo pipefail

find_haproxy() {
  command -v haproxy 2>/dev/null && return 0
  for dir in /usr/sbin /usr/local/sbin /sbin; do
    if [ -x "$dir/haproxy" ]; then echo "$dir/haproxy"; return 0; fi
  done
  return 1
}

if bin="$(find_haproxy)"; then
  echo "provision: $("$bin" -v | sed -n 1p) ($bin)" >&2
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "provision: haproxy is missing and installing it needs root: apt-get install haproxy" >&2; exit 1
  fi
}

echo "provision: installing Debian's haproxy" >&2
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
}
# A fresh machine may have no package lists yet: update once, then retry.
apt_install || { as_root apt-get update -qq >/dev/null && apt_install; }

bin="$(find_haproxy)" || { echo "provision: haproxy still not found after apt-get install" >&2; exit 1; }
echo "provision: $("$bin" -v | sed -n 1p) ($bin)" >&2
