#!/usr/bin/env bash
# The fio matrix (../shared/bench) against geomirror and its peers, in one run,
# so that the ratios in BENCHMARKS.md come from one machine at one time.
#
# usage: scripts/bench.sh [PEER ...]      default peers: nbdkit-file qemu-nbd-direct
# env:   RUNTIME=10 REPEAT=2 WORKLOADS=... (passed to fio-matrix.sh)
#        SHARED=../shared  DATADIR=/var/tmp/bench-data  RESULTS=/tmp/nbd-bench/<stamp>
#        TARGETS="serve"   which geomirror set-ups to measure (serve)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
BENCH=$SHARED/bench
DATADIR=${DATADIR:-/var/tmp/bench-data}
export RESULTS=${RESULTS:-/tmp/nbd-bench/$(date +%Y%m%d-%H%M%S)}
TARGETS=${TARGETS:-serve}
PEERS=("$@"); ((${#PEERS[@]})) || PEERS=(nbdkit-file qemu-nbd-direct)
mkdir -p "$RESULTS" "$DATADIR"
RUN=$(mktemp -d /tmp/gmbench.XXXXXX)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

cargo build --release --locked --quiet
BIN=$ROOT/target/release/geomirror

img=$DATADIR/geomirror.raw
if [[ ! -f $img || $(stat -c %s "$img") != 1073741824 ]]; then
  dd if=/dev/zero of="$img" bs=1M count=1024 oflag=direct conv=fsync status=none
fi

for t in $TARGETS; do
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  case $t in
    serve)
      sock=$RUN/serve.sock
      "$BIN" serve --disk "$img" --listen "unix:$sock" >"$RESULTS/geomirror-serve.log" 2>&1 &
      PID=$!
      for _ in $(seq 100); do nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break; sleep 0.1; done
      SERVER_PIDS=$PID "$BENCH/fio-matrix.sh" "nbd+unix:///?socket=$sock" geomirror-serve
      kill "$PID"; wait "$PID" || true; PID= ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

"$BENCH/peers.sh" "${PEERS[@]}"
python3 "$BENCH/tools/summarize.py" "$RESULTS/results.csv" "$RESULTS/results.md" >/dev/null
echo "results: $RESULTS/results.md"
cat "$RESULTS/results.md"
