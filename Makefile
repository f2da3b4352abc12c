# Boilerhouse — the commands a developer needs.
#   make run     run the daemon (release build) with ./workloads
#   make test    provision test deps, then run every test: unit + Docker integration
#   make lint    rustfmt + clippy, as CI does
#   make bench   benchmarks (figures, never asserted)
#   make bench-smoke  every benchmark at a small N: proves they still complete (CI runs it)

CARGO ?= cargo
export BOILERHOUSE_RCLONE_BIN ?= $(CURDIR)/.tools/bin/rclone

.PHONY: run test provision lint bench bench-smoke image-test clean-test-containers

run:
	$(CARGO) run --release

provision:
	scripts/provision-test-deps.sh
	scripts/provision-proxy.sh

# Integration tests run with bounded parallelism: they share one Docker engine on 2 cores.
# (Benchmarks are compiled by `make lint`; `make bench` runs them.)
test: provision
	$(CARGO) test --workspace --lib --bins --tests --no-fail-fast -- --test-threads=3

# Builds the runtime image on a debootstrapped base (no registry needed) and claims
# a container through it.
image-test: provision
	scripts/image-test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --workspace -- -D warnings

bench: provision
	$(CARGO) build --release
	$(CARGO) bench --bench claim_latency
	$(CARGO) bench --bench sync_restore
	$(CARGO) bench --bench cluster
	$(CARGO) bench --bench autoscale

# Each benchmark at a small size, so one that no longer completes fails CI. Its
# figures mean nothing at this N; timings are never asserted.
bench-smoke: provision
	BOILERHOUSE_BENCH_N=12 BOILERHOUSE_BENCH_CLAIMS=40 BOILERHOUSE_BENCH_COLD_SAMPLES=3 \
	  $(CARGO) bench --bench claim_latency
	SYNC_BENCH_SAMPLES=2 $(CARGO) bench --bench sync_restore
	BOILERHOUSE_BENCH_CLUSTER_SAMPLES=10 BOILERHOUSE_BENCH_CLUSTER_IDLE=2 $(CARGO) bench --bench cluster
	AUTOSCALE_BENCH_SECS=4 AUTOSCALE_BENCH_RATES=1,3 $(CARGO) bench --bench autoscale

# Removes containers left by test runs (label boilerhouse.instance=t*); never touches others.
clean-test-containers:
	docker ps -aq --filter label=boilerhouse.managed=true --format '{{.ID}} {{.Label "boilerhouse.instance"}}' \
	  | awk '$$2 ~ /^t[0-9]+x/ {print $$1}' | xargs -r docker rm -f
