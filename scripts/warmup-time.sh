#!/bin/bash
# Time to a full pool (docs/performance.md, "Warm-up"): starts the daemon (BIN, default
# target/debug/boilerhouse) with one pool of N busybox httpd containers, polls
# /pools/p every second, prints when idleCount reaches N and the lowest idle count
# over the next HOLD seconds (default 30), then kills it and removes its containers.
# Needs the test image (make provision). Figures are printed, never asserted.
#   usage: scripts/warmup-time.sh N none|1s|30s [MAX_SECONDS]
N=$1; KIND=$2; MAX=${3:-300}
ROOT=$(mktemp -d /tmp/bh-warm-XXXX); mkdir -p $ROOT/w
INST=t$(date +%s)x$RANDOM
case $KIND in
 none) HC="" ;;
 1s) HC=$'healthcheck:\n  test: ["CMD", "true"]\n  interval: 1s\n  timeout: 1s\n  retries: 3' ;;
 30s) HC=$'healthcheck:\n  test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]\n  interval: 30s\n  timeout: 5s\n  retries: 3\n  start_period: 10s' ;;
esac
cat > $ROOT/w/p.yaml <<Y
id: p
image: boilerhouse-test:busybox
user: "1000:1000"
command: ["sh", "-c", "echo ok > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
$HC
pool:
  min_size: $N
  max_size: $N
Y
PORT=$((20000 + RANDOM % 20000))
env BOILERHOUSE_API_HOST=127.0.0.1 BOILERHOUSE_API_PORT=$PORT BOILERHOUSE_INSTANCE=$INST BOILERHOUSE_STATE_DIR=$ROOT/s BOILERHOUSE_SECRETS_DIR=$ROOT/x BOILERHOUSE_SOCKET_DIR=$ROOT/k BOILERHOUSE_DATA_DIR=$ROOT/d BOILERHOUSE_WORKLOADS_DIR=$ROOT/w BOILERHOUSE_MAX_CONTAINERS=$((N+10)) BOILERHOUSE_CONTAINER_MEMORY_MB=32 ${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/boilerhouse} > $ROOT/log 2>&1 &
PID=$!
T0=$(date +%s.%N); full=""
while :; do
  sleep 1
  now=$(date +%s.%N); el=$(echo "$now - $T0" | bc)
  v=$(curl -s 127.0.0.1:$PORT/pools/p) || continue
  idle=$(echo "$v" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["idleCount"], v["startingCount"], v["createConcurrency"], v["probeTimeouts"], (v.get("lastError") or {}).get("message","")[:100])')
  echo "$el $idle" >> $ROOT/trace
  set -- $idle
  if [ -z "$full" ] && [ "$1" -ge "$N" ]; then full=$el; echo "FULL $N $KIND at $el s"; fi
  if [ -n "$full" ] && [ $(echo "$el - $full > ${HOLD:-30}" | bc) = 1 ]; then break; fi
  if [ $(echo "$el > $MAX" | bc) = 1 ]; then echo "NOT FULL after $MAX s: $idle"; break; fi
done
# stability after full: min idle over hold
if [ -n "$full" ]; then awk -v f=$full '$1>f {if(min==""||$2<min)min=$2} END{print "min idle during hold:", min}' $ROOT/trace; fi
kill -9 $PID; sleep 0.5
docker ps -aq --filter label=boilerhouse.instance=$INST | xargs -r docker rm -f >/dev/null
echo "trace: $ROOT/trace"
