#!/usr/bin/env bash
# The fio matrix (../shared/bench) against geomirror and its peers, in one run,
# so that the ratios in BENCHMARKS.md come from one machine at one time.
#
# usage: scripts/bench.sh [PEER ...]      default peers: nbdkit-file qemu-nbd-direct
# env:   RUNTIME=10 REPEAT=2 WORKLOADS=... (passed to fio-matrix.sh)
#        ROUNDS=1   times the whole list (targets, then peers) is run; rounds
#                   interleave every target and peer in time, where REPEAT
#                   repeats each one back to back (the disk here drifts by
#                   minutes, so interleaved rounds compare more fairly)
#        SHARED=../shared  DATADIR=/var/tmp/bench-data  RESULTS=/tmp/nbd-bench/<stamp>
#        TARGETS="serve mirror"   which geomirror set-ups to measure:
#          serve    geomirror serve on the image (no mirroring)
#          mirror   a local group: production member + copy member + witness,
#                   sync mode, copy disk on this machine over loopback TCP; the
#                   initial full sync is timed and reported as full_sync_MBps
#          mirror2  the same with two copy sites
#          fullsync the full sync alone, of SYNC_GB (4) GiB, with the production
#                   image on a second device (SYNC_PRODDIR=/dev/shm) so that the
#                   copy's disk is the only one it touches, as when production
#                   and copy are separate hosts, and the copy image fully
#                   allocated like the peers' image; no fio; SYNC_RUNS (3)
#                   rounds, each between two raw sequential writes of the
#                   copy image
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
BENCH=$SHARED/bench
DATADIR=${DATADIR:-/var/tmp/bench-data}
export RESULTS=${RESULTS:-/tmp/nbd-bench/$(date +%Y%m%d-%H%M%S)}
TARGETS=${TARGETS:-serve mirror}
PEERS=("$@"); ((${#PEERS[@]})) || PEERS=(nbdkit-file qemu-nbd-direct)
mkdir -p "$RESULTS" "$DATADIR"
RUN=$(mktemp -d /tmp/gmbench.XXXXXX)
PID=
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  stop_group 2>/dev/null
  rm -rf "$RUN"
}
trap cleanup EXIT

cargo build --release --locked --quiet
BIN=$ROOT/target/release/geomirror

img=$DATADIR/geomirror.raw
if [[ ! -f $img || $(stat -c %s "$img") != 1073741824 ]]; then
  dd if=/dev/zero of="$img" bs=1M count=1024 oflag=direct conv=fsync status=none
fi

# A local group for the mirror targets: one production member, COPIES copy
# members, one witness; disks of GIB GiB of data, the copies' in $DATADIR,
# the production one in PRODDIR. With KEEP set, the copy images already
# there (see alloc_image) are formatted in place instead of created sparse.
GPIDS=()
start_group() {
  local copies=$1 proddir=${2:-$DATADIR} gib=${3:-1} keep=${4:-} base=$((17400 + RANDOM % 1000)) i g
  local data=$((gib << 30))
  local cfg=$RUN/group.toml
  {
    echo 'group = "bench"'; echo 'mode = "sync"'; echo 'secret = "bench-secret"'
    echo '[[site]]'; echo 'name = "prod"'; echo 'resource = "bench-prod"'
    for i in $(seq 1 "$copies"); do echo '[[site]]'; echo "name = \"dr$i\""; echo "resource = \"bench-dr$i\""; done
    echo '[[member]]'; echo 'name = "p1"'; echo "address = \"127.0.0.1:$base\""
    echo "disks = [\"$proddir/gm-prod.img\"]"; echo "nbd = \"unix:$RUN/prod.sock\""
    for i in $(seq 1 "$copies"); do
      echo '[[member]]'; echo "name = \"c$i\""; echo "address = \"127.0.0.1:$((base + i))\""
      echo "disks = [\"$DATADIR/gm-dr$i.img\"]"
    done
    echo '[[member]]'; echo 'name = "w1"'; echo "address = \"127.0.0.1:$((base + 9))\""
  } >"$cfg"
  local meta=$((1 << 20))   # room for the label and bitmap beyond 1 GiB of data
  rm -f "$DATADIR"/gm-prod.img "$proddir"/gm-prod.img
  [[ -n $keep ]] || rm -f "$DATADIR"/gm-dr*.img
  "$BIN" format --group bench --resource bench-prod --size $((data + meta)) "$proddir/gm-prod.img" >/dev/null
  # The production data is incompressible pseudo-random bytes (no zero page),
  # written before any copy joins, so the full sync moves real data; the page
  # cache is dropped so the sync reads the disk.
  local seed=$DATADIR/random-1g.bin
  if [[ ! -f $seed || $(stat -c %s "$seed") != 1073741824 ]]; then
    head -c 1073741824 /dev/urandom >"$seed"
  fi
  for g in $(seq 0 $((gib - 1))); do
    dd if="$seed" of="$proddir/gm-prod.img" bs=4M count=256 seek=$((g * 256)) oflag=direct conv=fsync,notrunc status=none
  done
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  for i in $(seq 1 "$copies"); do
    "$BIN" format --group bench --resource "bench-dr$i" --size $((data + meta)) "$DATADIR/gm-dr$i.img" >/dev/null
  done
  GPIDS=()
  rm -rf "$RUN"/state-*
  local m
  for m in p1 w1 $(seq -f "c%g" 1 "$copies"); do
    "$BIN" up --config "$cfg" --member "$m" --state-dir "$RUN/state-$m" >"$RESULTS/geomirror-$t-$m.log" 2>&1 &
    GPIDS+=($!)
    sleep 1
  done
  # Wait for every copy to be UpToDate, then time the full sync from the
  # production host's own account: the line it logs when a copy becomes
  # UpToDate carries the bytes resynced and the time from the start of the
  # resync (so neither start-up nor the 0.5 s polling is counted).
  local t0; t0=$(date +%s.%N)
  for _ in $(seq 600); do
    if "$BIN" status --config "$cfg" --member p1 --json 2>/dev/null >"$RUN/status.json" && python3 2>/dev/null - "$RUN/status.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
c=[x for x in r["resources"] if x["role"]=="copy"]
sys.exit(0 if c and all(x["state"]=="UpToDate" and x["host"] for x in c) else 1)
PY
    then break; fi
    sleep 0.5
  done
  local wall; wall=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
  python3 - "$RESULTS/geomirror-$t-p1.log" "$t" "$wall" <<'PY' | tee -a "$RESULTS/full-sync.txt"
import re,sys
log,t,wall=sys.argv[1],sys.argv[2],sys.argv[3]
done={}
for line in open(log, errors="replace"):
    m=re.search(r'copy up to date copy=(\S+) resynced_bytes=(\d+) secs="([\d.]+)"', line)
    if m: done[m.group(1)]=(int(m.group(2)), float(m.group(3)))
if not done:
    print(f"{t}: full sync: no 'copy up to date' line in {log} ({wall} s wall)")
for copy,(b,secs) in sorted(done.items()):
    rate=b/secs if secs>0 else float("nan")
    print(f"{t}: full sync to {copy}: {b} B of random data in {secs:.3f} s = "
          f"{rate/1e6:.0f} MB/s (resync start to UpToDate, production host's log; "
          f"{wall} s wall after the members started, incl. joining)")
PY
}
# What a plain copy tool does on this disk in this run: the same 1 GiB of
# random data copied file to file by qemu-img convert, O_DIRECT on both sides,
# 16 requests in flight, out-of-order writes. A full sync reads and writes the
# same device at once, so this, not the write rate alone, is its ceiling here.
local_copy() {
  command -v qemu-img >/dev/null || { echo "local copy: qemu-img not installed" | tee -a "$RESULTS/full-sync.txt"; return; }
  local seed=$DATADIR/random-1g.bin dst=$DATADIR/gm-localcopy.img t0 t1
  [[ -f $seed ]] || head -c 1073741824 /dev/urandom >"$seed"
  rm -f "$dst"; fallocate -l 1073741824 "$dst"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(date +%s.%N)
  qemu-img convert -f raw -O raw -t none -T none -W -m 16 -n "$seed" "$dst"
  t1=$(date +%s.%N)
  rm -f "$dst"
  python3 -c "print(f'local copy: 1073741824 B file to file on this disk in {$t1-$t0:.3f} s = {1073741824/($t1-$t0)/1e6:.0f} MB/s (qemu-img convert -t none -T none -W -m 16)')" | tee -a "$RESULTS/full-sync.txt"
}
# FILE as a disk of GIB GiB of data plus the metadata area, every block
# written, as the peers' raw image is (and a block device is): a sync then
# overwrites, like the raw write it is compared with.
alloc_image() {
  dd if=/dev/zero of="$1" bs=1M count=$(($2 * 1024 + 1)) oflag=direct conv=fsync status=none
}
# Sequential write of GIB GiB to FILE as fio does it for rawdisk (io_uring,
# O_DIRECT, 1 MiB requests 16 deep: the matrix's seqwrite), over a fixed size.
raw_write() {
  local label=$1 file=$2 gib=$3
  fio --name=raw --filename="$file" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
    --iodepth=16 --size=$((gib << 30)) --output-format=json 2>/dev/null |
    python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['write']; print(f'$label: raw sequential write of {$gib} GiB: {j[\"bw_bytes\"]/1e6:.0f} MB/s (fio io_uring O_DIRECT 1 MiB QD16, the seqwrite workload)')" |
    tee -a "$RESULTS/full-sync.txt"
}
stop_group() {
  local p
  for p in "${GPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${GPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  GPIDS=()
}

for round in $(seq "${ROUNDS:-1}"); do
  echo "=== round $round of ${ROUNDS:-1}" >&2
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
      mirror|mirror2)
        copies=1; [[ $t == mirror2 ]] && copies=2
        local_copy
        start_group "$copies"
        SERVER_PIDS="${GPIDS[*]}" "$BENCH/fio-matrix.sh" "nbd+unix:///bench?socket=$RUN/prod.sock" "geomirror-$t"
        stop_group ;;
      fullsync)
        # The disk's speed drifts by minutes on a shared host, so the sync is
        # also compared with the disk's sequential write of the same bytes
        # of the same file just before it and just after it. SYNC_RUNS (3)
        # rounds; the summary takes medians.
        proddir=${SYNC_PRODDIR:-/dev/shm}
        for _ in $(seq "${SYNC_RUNS:-3}"); do
          rm -f "$DATADIR/gm-dr1.img"
          alloc_image "$DATADIR/gm-dr1.img" "${SYNC_GB:-4}"
          raw_write fullsync-before "$DATADIR/gm-dr1.img" "${SYNC_GB:-4}"
          start_group 1 "$proddir" "${SYNC_GB:-4}" keep
          stop_group
          raw_write fullsync-after "$DATADIR/gm-dr1.img" "${SYNC_GB:-4}"
          rm -f "$proddir/gm-prod.img"
        done ;;
      *) echo "unknown target $t" >&2; exit 2 ;;
    esac
  done

  "$BENCH/peers.sh" "${PEERS[@]}"
done
python3 "$BENCH/tools/summarize.py" "$RESULTS/results.csv" "$RESULTS/results.md" >/dev/null
# Full sync against the raw disk's sequential write of this same run.
if [[ -f $RESULTS/full-sync.txt ]]; then
  python3 - "$RESULTS/results.csv" "$RESULTS/full-sync.txt" <<'PY' | tee -a "$RESULTS/full-sync.txt"
import csv,re,sys
raw=[float(r["MBps"]) for r in csv.DictReader(open(sys.argv[1]))
     if r["label"]=="rawdisk" and r["workload"]=="seqwrite" and r["MBps"]]
# With several rounds, the median of the rawdisk's runs.
raw=[sorted(raw)[len(raw)//2]] if raw else []
# Each mirror target's local copy line comes just before its full sync lines;
# the fullsync target reads another device, so no local copy applies to it.
local=None
lines=open(sys.argv[2]).read().splitlines()
adjacent=[int(m.group(1)) for l in lines if l.startswith("fullsync-")
          for m in [re.search(r": (\d+) MB/s", l)] if m]
for line in lines:
    if line.startswith("fullsync:"):
        local=None
    m=re.search(r"= (\d+) MB/s", line)
    if not m:
        continue
    if line.startswith("local copy"):
        local=int(m.group(1))
        continue
    if " full sync to " not in line:
        continue
    rate=int(m.group(1))
    out=f"  {line.split(':')[0]} {line.split(':')[1].strip()}: {rate} MB/s"
    if raw:
        out+=f" = {100*rate/raw[0]:.0f}% of rawdisk seqwrite {raw[0]:.0f} MB/s"
    if local:
        out+=f", {rate/local:.2f}x the local copy ({local} MB/s)"
    print(out)
syncs=[int(m.group(1)) for l in lines if l.startswith("fullsync: full sync")
       for m in [re.search(r"= (\d+) MB/s", l)] if m]
if syncs and adjacent:
    from statistics import median as med
    print(f"  fullsync, {len(syncs)} runs: median {med(syncs):.0f} MB/s"
          f" ({'/'.join(map(str, syncs))}) = {100*med(syncs)/med(adjacent):.0f}% of the"
          f" median raw sequential write just before and after each"
          f" ({med(adjacent):.0f} MB/s of {'/'.join(map(str, adjacent))})")
PY
fi
echo "results: $RESULTS/results.md"
cat "$RESULTS/results.md"
