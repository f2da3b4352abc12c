#!/usr/bin/env bash
# Proves the container image works, on a machine where no registry can be reached:
#   1. base image: Debian bookworm (minbase) by debootstrap from the Debian mirror,
#      imported as boilerhouse-base:bookworm — built once, reused while it exists;
#   2. the host's release binary and rclone go into the Dockerfile's `prebuilt`
#      target, on that base (compiling inside needs the rust image: not here);
#   3. the image runs against the local engine as deploy/docker-compose.yml runs
#      it (read-only root, only CHOWN/DAC_OVERRIDE/FOWNER, no-new-privileges,
#      state/secrets/socket/data dirs at identical host and container paths, on one
#      mount so the state cache can rename between them),
#      with its own BOILERHOUSE_INSTANCE and a workload on the test image;
#   4. over HTTP (published on 127.0.0.1 only): /health, Docker's HEALTHCHECK,
#      a warm pool, a claim with a secret, a release;
#   5. everything it created is removed on exit, also on failure: the daemon
#      container, the containers labelled with its instance, its directories.
# Environment: BOILERHOUSE_BASE_IMAGE, BOILERHOUSE_IMAGE, BOILERHOUSE_TEST_IMAGE,
# DEBIAN_MIRROR, BOILERHOUSE_RCLONE_BIN, CARGO.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

base_image="${BOILERHOUSE_BASE_IMAGE:-boilerhouse-base:bookworm}"
image="${BOILERHOUSE_IMAGE:-boilerhouse:image-test}"
test_image="${BOILERHOUSE_TEST_IMAGE:-boilerhouse-test:busybox}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cargo="${CARGO:-cargo}"
# t<pid>x…: `make clean-test-containers` also recognises leftovers of this instance.
instance="t$$ximage${RANDOM}"
daemon="bh-image-test-$instance"
work="$(mktemp -d /tmp/bh-image-test.XXXXXX)"
started=$SECONDS

log() { printf 'image-test: %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
phase() { log "$1 ($((SECONDS - started)) s)"; }

cleanup() {
  local status=$?
  set +e
  if [ "$status" -ne 0 ] && docker inspect "$daemon" >/dev/null 2>&1; then
    log "daemon log (last 60 lines):"
    docker logs --tail 60 "$daemon" >&2
  fi
  docker rm -f -v "$daemon" >/dev/null 2>&1
  local ids
  ids="$(docker ps -aq --filter "label=boilerhouse.instance=$instance")"
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one id per word
    docker rm -f -v $ids >/dev/null
  fi
  # A failed debootstrap can leave /proc or /sys mounted inside the rootfs.
  awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
  # Tenant directories belong to uid 1000: when not root, remove them as root in a container.
  if ! rm -rf --one-file-system "$work" 2>/dev/null; then
    docker run --rm --entrypoint /bin/rm -v "$work:$work" "$image" -rf "$work" >/dev/null 2>&1
    rm -rf "$work"
  fi
  if [ "$status" -eq 0 ]; then log "passed in $((SECONDS - started)) s"; else log "FAILED (exit status $status)"; fi
  exit "$status"
}
trap cleanup EXIT

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

command -v docker >/dev/null || fail "docker CLI missing"
command -v curl >/dev/null || fail "curl missing"
docker info >/dev/null || fail "Docker engine unreachable"

# --- test dependencies (rclone, the test image) ---------------------------------
# Retried once: its `rclone version | head -n1` can die of SIGPIPE under pipefail.
scripts/provision-test-deps.sh || scripts/provision-test-deps.sh
rclone_bin="${BOILERHOUSE_RCLONE_BIN:-$root/.tools/bin/rclone}"
[ -x "$rclone_bin" ] || fail "rclone not found at $rclone_bin"

# --- 1. base image ----------------------------------------------------------------
if docker image inspect "$base_image" >/dev/null 2>&1; then
  log "base image $base_image: cached"
else
  export PATH="$PATH:/usr/sbin:/sbin"
  if ! command -v debootstrap >/dev/null; then
    log "installing Debian's debootstrap"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
      || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  log "debootstrap --variant=minbase bookworm from $mirror (once; cached as $base_image)"
  rootfs="$work/rootfs"
  as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
  as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
  as_root tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
  as_root rm -rf --one-file-system "$rootfs"
  phase "base image $base_image imported"
fi

# --- 2. runtime image from the prebuilt binary ------------------------------------
"$cargo" build --release --bin boilerhouse
phase "release binary built"
ctx="$work/context"
mkdir -p "$ctx/dist"
cp Dockerfile .dockerignore Cargo.toml "$ctx/"
cp target/release/boilerhouse "$ctx/dist/boilerhouse"
if command -v strip >/dev/null; then strip --strip-debug "$ctx/dist/boilerhouse"; fi
cp -L "$rclone_bin" "$ctx/dist/rclone"
previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
docker build --target prebuilt --build-arg "RUNTIME_IMAGE=$base_image" -t "$image" "$ctx" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; fail "docker build --target prebuilt failed"; }
docker run --rm --entrypoint /usr/local/bin/boilerhouse "$image" --help >/dev/null \
  || fail "the daemon binary does not run in the image"
# The image this run replaced would stay behind untagged.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
phase "image $image built"

# Static properties: root (documented), no setuid files, CA bundle, rclone.
[ "$(docker image inspect -f '{{.Config.User}}' "$image")" = root ] || fail "image user is not root"
out="$(docker run --rm --entrypoint /bin/sh "$image" -c \
  'find / -xdev -type f -perm /6000; test -s /etc/ssl/certs/ca-certificates.crt && echo ca-ok; rclone version | sed -n 1p')"
case "$out" in *ca-ok*rclone*) ;; *) fail "image contents: $out" ;; esac
if printf '%s\n' "$out" | grep -q '^/'; then fail "setuid/setgid files left: $out"; fi

# --- 3. run it against the engine -------------------------------------------------
docker_host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
case "$docker_host" in
  unix://*) socket="${docker_host#unix://}" ;;
  *) fail "image-test mounts the engine's socket: DOCKER_HOST must be unix://… (is $docker_host)" ;;
esac
for d in states secrets sockets data workloads; do mkdir -p "$work/$d"; done
cat >"$work/workloads/web.yaml" <<EOF
id: web
image: $test_image
command: ["sleep", "infinity"]
user: "1000:1000"
pool:
  min_size: 1
  max_size: 3
EOF
docker run -d --name "$daemon" \
  --label "boilerhouse.image-test=$instance" \
  -p 127.0.0.1::3000 \
  --read-only --tmpfs /tmp \
  --cap-drop ALL --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER \
  --cap-add SETUID --cap-add SETGID --cap-add KILL \
  --security-opt no-new-privileges:true \
  --health-interval 2s --health-start-period 2s \
  -v "$socket:/var/run/docker.sock" \
  -v "$work:$work" \
  -v "$work/workloads:/etc/boilerhouse/workloads:ro" \
  -e "BOILERHOUSE_INSTANCE=$instance" \
  -e "BOILERHOUSE_STATE_DIR=$work/states" \
  -e "BOILERHOUSE_SECRETS_DIR=$work/secrets" \
  -e "BOILERHOUSE_SOCKET_DIR=$work/sockets" \
  -e "BOILERHOUSE_DATA_DIR=$work/data" \
  -e BOILERHOUSE_CONTAINER_MEMORY_MB=64 \
  -e RUST_LOG=info \
  "$image" >/dev/null
port="$(docker port "$daemon" 3000/tcp | sed -n 1p)"
port="${port##*:}"
base="http://127.0.0.1:$port"

# until <seconds> <what> <command…>: retries the command every 0.2 s.
until_ok() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within $limit s"
    docker inspect -f '{{.State.Running}}' "$daemon" 2>/dev/null | grep -q true || fail "daemon container exited"
    sleep 0.2
  done
}
pool_idle() { curl -fsS "$base/pools/web" | grep -Eq '"idleCount":[1-9]'; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$daemon")" = healthy ]; }
gone() { ! docker inspect "$1" >/dev/null 2>&1; }

until_ok 30 "GET /health" curl -fsS "$base/health"
until_ok 60 "pool web warm" pool_idle
until_ok 30 "Docker HEALTHCHECK healthy" healthy
phase "daemon up on $base, pool warm, container healthy"
# One mount for states and data, as deploy/docker-compose.yml has it: the state cache
# can rename a returning tenant's files into a state dir (it says so at start if not).
if docker logs "$daemon" 2>&1 | grep -q "state cache cannot rename"; then
  fail "the state cache cannot rename into the state dir: $(docker logs "$daemon" 2>&1 | grep 'cannot rename')"
fi

# --- 4. claim and release -----------------------------------------------------------
claim="$(curl -fsS -X POST -H 'Content-Type: application/json' \
  -d '{"poolId": "web", "secrets": {"API_KEY": "from-image-test"}}' "$base/tenants/alice/claim")" \
  || fail "claim refused"
cid="$(printf '%s' "$claim" | sed -n 's/.*"containerId":"\([^"]*\)".*/\1/p')"
name="$(printf '%s' "$claim" | sed -n 's/.*"containerName":"\([^"]*\)".*/\1/p')"
[ -n "$cid" ] && [ -n "$name" ] || fail "claim answer: $claim"
[ "$(docker inspect -f '{{index .Config.Labels "boilerhouse.instance"}}' "$name")" = "$instance" ] \
  || fail "$name is not labelled with instance $instance"
secret="$(docker exec -u 1000 "$name" cat /secrets/API_KEY)"
[ "$secret" = from-image-test ] || fail "secret in $name: $secret"
docker exec -u 1000 "$name" sh -c 'echo kept > /state/f'
[ "$(cat "$work/states/$cid/f")" = kept ] || fail "state of $cid not at the identical host path"
[ "$(stat -c %u "$work/states/$cid")" = 1000 ] || fail "state dir of $cid not owned by the workload user"
phase "claimed $cid ($name)"

release="$(curl -fsS -X POST -H 'Content-Type: application/json' -d '{}' "$base/tenants/alice/release")" \
  || fail "release refused"
case "$release" in *'"success":true'*) ;; *) fail "release answer: $release" ;; esac
until_ok 30 "released container $name removed" gone "$name"
status="$(curl -fsS "$base/tenants/alice/status")"
case "$status" in *'"status":"cold"'*) ;; *) fail "status after release: $status" ;; esac
phase "released; container removed"
