#!/usr/bin/env bash
# Bytes a failover resyncs: a group a1, a2 (production site, one shared
# disk), b1 (copy site), w1 (witness), sync mode; once the copy is UpToDate,
# write 8 MiB through the production host (a1 or a2) as 128 x 64 KiB,
# FLUSH, wait WAIT_S, kill -9 it; the other one takes over, and the
# copy's resynced_bytes after it is printed.
#
# usage: scripts/failover-resync.sh        env: SIZE=1G WAIT_S=1 ROUNDS=3 BIN=target/release/geomirror
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G} WAIT_S=${WAIT_S:-1} ROUNDS=${ROUNDS:-3}
BIN=${BIN:-}
if [[ -z $BIN ]]; then
  cargo build --release --locked --quiet
  BIN=$PWD/target/release/geomirror
fi
command -v nbdsh >/dev/null || { echo "needs nbdsh (apt-get install libnbd-bin python3-libnbd)" >&2; exit 2; }
RUN=$(mktemp -d /tmp/gmfailover.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

status() { "$BIN" status --config "$RUN/g.toml" --member "$1" --json 2>/dev/null; }
# Waits until `status` of member $1 satisfies the python expression $2 over `r`.
wait_for() {
  local m=$1 expr=$2 what=$3
  for _ in $(seq 1200); do
    if status "$m" | python3 -c "import json,sys; r=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for $what" >&2; exit 1
}
copy_ok='[x for x in r["resources"] if x["id"]=="g-dr" and x["state"]=="UpToDate" and x["host"]]'

round() {
  local k=$1 base=$((20400 + RANDOM % 2000)) m
  rm -rf "$RUN"/*
  "$BIN" format --group g --resource g-prod --size "$SIZE" "$RUN/prod.img" >/dev/null
  "$BIN" format --group g --resource g-dr --size "$SIZE" "$RUN/dr.img" >/dev/null
  cat >"$RUN/g.toml" <<TOML
group = "g"
mode = "sync"
secret = "failover-resync"
[[site]]
name = "prod"
resource = "g-prod"
[[site]]
name = "dr"
resource = "g-dr"
[[member]]
name = "a1"
address = "127.0.0.1:$base"
disks = ["$RUN/prod.img"]
nbd = "unix:$RUN/a1.sock"
[[member]]
name = "a2"
address = "127.0.0.1:$((base + 1))"
disks = ["$RUN/prod.img"]
nbd = "unix:$RUN/a2.sock"
[[member]]
name = "b1"
address = "127.0.0.1:$((base + 2))"
disks = ["$RUN/dr.img"]
[[member]]
name = "w1"
address = "127.0.0.1:$((base + 3))"
TOML
  PIDS=()
  for m in a1 a2 b1 w1; do
    "$BIN" up --config "$RUN/g.toml" --member "$m" --state-dir "$RUN/state-$m" >"$RUN/$m.log" 2>&1 &
    PIDS+=($!)
  done
  wait_for w1 "$copy_ok" "the copy to be UpToDate"
  # Whichever of a1 and a2 joined first hosts production: write through it
  # and kill it; the other one takes over.
  local host next
  host=$(status w1 | python3 -c 'import json,sys; r=json.load(sys.stdin); print([x for x in r["resources"] if x["id"]=="g-prod"][0]["host"])')
  if [[ $host == a1 ]]; then next=a2 victim=${PIDS[0]}; else next=a1 victim=${PIDS[1]}; fi
  PATH=/usr/bin:/bin:$PATH nbdsh -u "nbd+unix:///g?socket=$RUN/$host.sock" -c '
for i in range(128):
    h.pwrite(bytes([i % 251 + 1]) * 65536, i * 65536)
h.flush()'
  sleep "$WAIT_S"
  kill -9 "$victim"; wait "$victim" 2>/dev/null || true
  wait_for w1 "[x for x in r[\"resources\"] if x[\"id\"]==\"g-prod\" and x[\"host\"]==\"$next\"] and $copy_ok" "$next to host production with the copy UpToDate"
  local bytes; bytes=$(status w1 | python3 -c 'import json,sys; r=json.load(sys.stdin); print([x for x in r["resources"] if x["id"]=="g-dr"][0]["resynced_bytes"])')
  echo "round $k: volume $SIZE, 8 MiB written, kill -9 after ${WAIT_S}s: the failover resynced $bytes bytes"
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
for k in $(seq 1 "$ROUNDS"); do round "$k"; done
