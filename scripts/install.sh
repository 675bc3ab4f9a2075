#!/usr/bin/env bash
# Install geomirror: the binary, the udev rule giving attached volumes a
# stable name (/dev/geomirror/<group>), and the systemd unit template.
#
# Usage: scripts/install.sh [--prefix DIR] [--destdir DIR] [--binary FILE] [--dry-run]
#   --prefix DIR   where the binary goes, as DIR/bin/geomirror (default /usr/local);
#                  the unit's ExecStart is rewritten to point there
#   --destdir DIR  staging root prepended to every installed path (packaging, tests);
#                  with it, udev and systemd are not reloaded
#   --binary FILE  binary to install (default target/release/geomirror, else target/debug/geomirror)
#   --dry-run      print what would be done and change nothing
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=
binary=
dry_run=0
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --binary) binary=${2:?--binary needs a file}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;; esac

if [[ -z $binary ]]; then
  for b in target/release/geomirror target/debug/geomirror; do
    [[ -x $b ]] && { binary=$b; break; }
  done
fi
[[ -n $binary && -x $binary ]] || { echo "install.sh: no binary (build with cargo build --release, or pass --binary)" >&2; exit 1; }

bin_dir="$destdir$prefix/bin"
rules_dir="$destdir/etc/udev/rules.d"
unit_dir="$destdir/etc/systemd/system"
conf_dir="$destdir/etc/geomirror"

run() {
  if ((dry_run)); then printf 'would run:'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

run install -d -m 0755 "$bin_dir" "$rules_dir" "$unit_dir" "$conf_dir"
run install -m 0755 "$binary" "$bin_dir/geomirror"
run install -m 0644 udev/99-geomirror.rules "$rules_dir/99-geomirror.rules"
# The unit names the binary by its installed path (without the staging root).
if ((dry_run)); then
  echo "would write: $unit_dir/geomirror@.service (ExecStart=$prefix/bin/geomirror ...)"
else
  sed "s|/usr/local/bin/geomirror|$prefix/bin/geomirror|g" systemd/geomirror@.service >"$unit_dir/geomirror@.service"
  chmod 0644 "$unit_dir/geomirror@.service"
fi

# Live install: make udev and systemd see the new files.
if [[ -z $destdir ]]; then
  if command -v udevadm >/dev/null 2>&1; then
    run udevadm control --reload-rules
    run udevadm trigger --action=change --subsystem-match=block --sysname-match='nbd*'
  fi
  if [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
  fi
fi
echo "installed geomirror to ${destdir:-/} (prefix $prefix)$( ((dry_run)) && echo ' [dry run: nothing changed]')"
