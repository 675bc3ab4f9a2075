#!/usr/bin/env bash
# Test hosts in network namespaces: one namespace per member, each with a veth
# into a bridge in the root namespace, addresses 10.231.0.(10+i)/24.
#
# usage: scripts/netns-cluster.sh up N [PREFIX]     create PREFIX1..PREFIXN (default gm)
#        scripts/netns-cluster.sh down [PREFIX]     remove them and the bridge
#        scripts/netns-cluster.sh addr I            print member I's address
#        scripts/netns-cluster.sh cut I [PREFIX]    take member I's link down
#        scripts/netns-cluster.sh restore I [PREFIX] bring it back up
#        scripts/netns-cluster.sh split I,J,... [PREFIX]  move those members' links to a
#                                                  bridge of their own: two partitions
#        scripts/netns-cluster.sh heal [PREFIX]     every member back on the one bridge
# Needs root and iproute2. Traffic stays inside these namespaces and the bridge.
set -euo pipefail
cmd=${1:?usage: netns-cluster.sh up N|down|addr I|cut I|restore I|split I,J,...|heal}
NET=10.231.0

addr() { echo "$NET.$((10 + $1))"; }

case $cmd in
  up)
    n=${2:?member count}; p=${3:-gm}; br=${p}br0
    ip link show "$br" >/dev/null 2>&1 || { ip link add "$br" type bridge; ip link set "$br" up; }
    for i in $(seq 1 "$n"); do
      ns=$p$i
      ip netns add "$ns"
      ip link add "${p}h$i" type veth peer name eth0 netns "$ns"
      ip link set "${p}h$i" master "$br" up
      ip -n "$ns" addr add "$(addr "$i")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    done
    ;;
  down)
    p=${2:-gm}
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${p}[0-9]+$" || true); do
      ip netns del "$ns"
    done
    for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${p}h[0-9]+$" || true); do
      ip link del "$l" 2>/dev/null || true
    done
    ip link del "${p}br0" 2>/dev/null || true
    ip link del "${p}br1" 2>/dev/null || true
    ;;
  addr) addr "${2:?member index}" ;;
  cut)     ip link set "${3:-gm}h${2:?member index}" down ;;
  restore) ip link set "${3:-gm}h${2:?member index}" up ;;
  split)
    p=${3:-gm}; br=${p}br1
    ip link show "$br" >/dev/null 2>&1 || { ip link add "$br" type bridge; ip link set "$br" up; }
    for i in ${2//,/ }; do ip link set "${p}h$i" master "$br"; done
    ;;
  heal)
    p=${2:-gm}
    for l in $(ip -o link show master "${p}br1" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link set "$l" master "${p}br0"
    done
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
