#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# A two-node SLURM 22.05 cluster on ONE machine for multi-node tests: each
# slurmd runs in its own network namespace, so `srun -N2` really spans two
# "hosts" (node1, node2) that talk TCP to each other over a private bridge.
#
#   slurm_netns.sh start          (root) create namespaces, start daemons; idempotent
#   slurm_netns.sh stop [--purge] stop daemons, delete the namespaces we created;
#                                 --purge also deletes the state directory
#   slurm_netns.sh status         exit 0 when everything is up
#
# Layout (10.77.x addresses exist ONLY inside namespaces this script creates;
# the root namespace gets no address and no route, and no namespace has a
# default route, so nothing can leave the machine):
#   netns <prefix>-ctl : bridge br0 <net>.1/24, slurmctld.  Run clients here:
#                        nsenter --net=/run/netns/<prefix>-ctl env SLURM_CONF=... srun ...
#   netns <prefix>-nI  : eth0 <net>.(10+I) (veth into br0), slurmd -N nodeI
# munged runs in the root namespace; its socket is a path, usable from every
# namespace.  No accounting (no slurmdbd): use squeue, not sacct.
#
# Daemons are entered with `nsenter --net=`, NOT `ip netns exec`: the latter
# remounts /sys, and slurmd 22.05 then dies with "No filesystem mounted on
# /sys/fs/cgroup".  Each daemon also gets a private mount + UTS namespace in
# which /etc/hosts lists the nodes and the hostname is the node's name, so
# `hostname`, MASTER_ADDR=node1 etc. work inside jobs as on a real cluster.
# The root namespace's /etc/hosts and hostname are untouched.
#
# Environment (all optional):
#   IMGTRAIN_SLURM_MN_DIR        state directory              (/tmp/imgtrain-slurm-mn)
#   IMGTRAIN_SLURM_MN_NS_PREFIX  network namespace prefix     (imgtrain-slurm)
#   IMGTRAIN_SLURM_MN_NET        first three octets, 10.77.N  (10.77.0)
#   IMGTRAIN_SLURM_MN_NODES      number of nodes, 2-9         (2)
#   IMGTRAIN_SLURM_MN_CPUS       CPUs per node                (2)
#   IMGTRAIN_SLURM_PARTITION     partition name               (debug)
set -Eeuo pipefail

LOG_TAG=slurm_netns
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=_common.sh
. "$HERE/_common.sh"
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

BASE=${IMGTRAIN_SLURM_MN_DIR:-/tmp/imgtrain-slurm-mn}
PREFIX=${IMGTRAIN_SLURM_MN_NS_PREFIX:-imgtrain-slurm}
NET=${IMGTRAIN_SLURM_MN_NET:-10.77.0}
NODES=${IMGTRAIN_SLURM_MN_NODES:-2}
CPUS=${IMGTRAIN_SLURM_MN_CPUS:-2}
PARTITION=${IMGTRAIN_SLURM_PARTITION:-debug}
CONF=$BASE/etc/slurm.conf
MUNGE_DIR=$BASE/munge
CTL_NS=$PREFIX-ctl
export SLURM_CONF=$CONF

[[ $NET =~ ^10\.77\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$ ]] \
  || { echo "IMGTRAIN_SLURM_MN_NET must be 10.77.N, got '$NET'" >&2; exit 2; }
[[ $NODES =~ ^[2-9]$ ]] || { echo "IMGTRAIN_SLURM_MN_NODES must be 2-9, got '$NODES'" >&2; exit 2; }
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || { echo "IMGTRAIN_SLURM_MN_CPUS must be a positive integer, got '$CPUS'" >&2; exit 2; }
[[ $PREFIX =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "bad IMGTRAIN_SLURM_MN_NS_PREFIX '$PREFIX'" >&2; exit 2; }

node_ns() { echo "$PREFIX-n$1"; }
node_ip() { echo "$NET.$((10 + $1))"; }
# our namespaces: ctl first, then the nodes
our_namespaces() {
  local i
  echo "$CTL_NS"
  for i in $(seq "$NODES"); do node_ns "$i"; done
}
ns_exists() { [ -e "/run/netns/$1" ]; }
# a client command in the controller's network namespace
in_ctl() { nsenter --net="/run/netns/$CTL_NS" "$@"; }

idle_nodes() { in_ctl sinfo -h -t idle -o %D 2>/dev/null || true; }
all_idle() { [ "$(idle_nodes)" = "$NODES" ]; }

is_up() {
  local i
  ns_exists "$CTL_NS" && pid_alive "$MUNGE_DIR/munged.pid" && pid_alive "$BASE/run/slurmctld.pid" || return 1
  for i in $(seq "$NODES"); do
    ns_exists "$(node_ns "$i")" && pid_alive "$BASE/run/slurmd-node$i.pid" || return 1
  done
  [[ "$(in_ctl sinfo -h -o %D 2>/dev/null || true)" = "$NODES" ]]
}

# --------------------------------------------------------------------- start
make_network() {
  # ip netns add makes /run/netns a mount point if it is none; remember whether
  # that was us, so stop can undo it and leave no mount behind.
  [ -d /run/netns ] || touch "$BASE/run/created-run-netns-dir"
  mountpoint -q /run/netns 2>/dev/null || touch "$BASE/run/created-run-netns-mount"
  local i ns
  ip netns add "$CTL_NS" || unavailable "cannot create network namespaces (ip netns add failed)"
  ip -n "$CTL_NS" link set lo up
  ip -n "$CTL_NS" link add br0 type bridge
  ip -n "$CTL_NS" addr add "$NET.1/24" dev br0
  ip -n "$CTL_NS" link set br0 up
  for i in $(seq "$NODES"); do
    ns=$(node_ns "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # both ends are created directly inside our namespaces, never in the root one
    ip link add "vh$i" netns "$CTL_NS" type veth peer name eth0 netns "$ns"
    ip -n "$CTL_NS" link set "vh$i" master br0 up
    ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

write_conf() {
  local i mem
  mem=$(( $(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') / NODES ))
  [ "$mem" -ge 1024 ] || mem=2048
  {
    cat <<CONF
# Generated by tests/cluster/slurm_netns.sh; rewritten on every start.
ClusterName=imgtrainmn
SlurmctldHost=localhost($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket,cred_expire=5
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
PlugStackConfig=$BASE/etc/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
CONF
    for i in $(seq "$NODES"); do
      echo "NodeName=node$i NodeAddr=$(node_ip "$i") CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF"
  : >"$BASE/etc/plugstack.conf"
  # the /etc/hosts every daemon (and so every job) sees
  {
    cat /etc/hosts
    echo "$NET.1 slurmctl"
    for i in $(seq "$NODES"); do echo "$(node_ip "$i") node$i"; done
  } >"$BASE/etc/hosts"
}

# in_ns NETNS HOSTNAME CMD...: start a daemon in NETNS with a private mount and
# UTS namespace: /etc/hosts bind-mounted from $BASE/etc/hosts, hostname set.
# --propagation private keeps the bind mount out of the root mount namespace.
in_ns() {
  local ns=$1 name=$2
  shift 2
  # shellcheck disable=SC2016  # expanded by the inner sh
  nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation private \
    sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"' \
    sh "$BASE/etc/hosts" "$name" "$@" 9<&-
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || unavailable "slurm_netns.sh needs root (network namespaces)"
  need_cgroupfs
  local tool
  for tool in nsenter unshare ip; do
    command -v "$tool" >/dev/null || unavailable "needs $tool (util-linux, iproute2)"
  done
  mkdir -p "$BASE/log"
  ensure_packages "$BASE/log/apt.log" slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client \
    munged:munge mungekey:munge

  if is_up; then
    log "already running"
    echo "SLURM_CONF=$CONF NETNS=/run/netns/$CTL_NS"
    return 0
  fi
  do_stop   # leftovers of an earlier or half-failed start

  local i f
  mkdir -p "$BASE"/{etc,log,run}
  chmod 755 "$BASE"
  rm -rf "$BASE/state" "$BASE/spool"
  mkdir -p "$BASE/state"
  for i in $(seq "$NODES"); do mkdir -p "$BASE/spool/node$i"; done
  for f in "$BASE"/log/*.log; do
    if [ -e "$f" ] && [ "${f##*/}" != apt.log ]; then mv -f "$f" "$f.prev"; fi
  done
  make_network
  write_conf

  start_munged "$MUNGE_DIR" "$BASE/log/munged.log"
  in_ns "$CTL_NS" slurmctl slurmctld -f "$CONF"
  for i in $(seq "$NODES"); do
    in_ns "$(node_ns "$i")" "node$i" slurmd -f "$CONF" -N "node$i"
  done
  if ! wait_until 30 all_idle; then
    log "nodes did not become idle ($(idle_nodes) of $NODES idle); last log lines:"
    tail -n 15 "$BASE"/log/slurm*.log >&2 || true
    exit 1
  fi
  log "up: $NODES nodes x $CPUS cpus, partition=$PARTITION, clients: nsenter --net=/run/netns/$CTL_NS"
  echo "SLURM_CONF=$CONF NETNS=/run/netns/$CTL_NS"
}

# ---------------------------------------------------------------------- stop
no_live_jobs() { [ -z "$(in_ctl squeue -h -t PD,R,CG,S,CF,RQ,RS,SO -o %A 2>/dev/null | head -n 1)" ]; }

# pids of processes living in one of our network namespaces
pids_in_our_namespaces() {
  local ns ino
  for ns in $(our_namespaces); do
    ns_exists "$ns" || continue
    ino=$(stat -L -c %i "/run/netns/$ns") || continue
    # (find complains about processes that exit while it runs)
    { find /proc/[0-9]*/ns/net -maxdepth 0 -lname "net:\\[$ino\\]" 2>/dev/null || true; } | cut -d/ -f3
  done | sort -u
}

do_stop() {
  local ids pid ns leftovers pidfiles
  if ns_exists "$CTL_NS" && pid_alive "$BASE/run/slurmctld.pid"; then
    ids=$(in_ctl squeue -h -o %A 2>/dev/null || true)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086  # one id per word
      in_ctl scancel $ids 2>/dev/null || true
      wait_until 30 no_live_jobs || log "jobs still live after 30 s"
    fi
  fi
  pidfiles=("$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid" "$MUNGE_DIR/munged.pid")
  stop_pidfiles 15 "${pidfiles[@]}"
  # anything else still inside our namespaces (a job's stray child) is ours
  leftovers=$(pids_in_our_namespaces)
  if [ -n "$leftovers" ]; then
    log "killing leftover processes in our namespaces: $(echo "$leftovers" | tr '\n' ' ')"
    for pid in $leftovers; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2
  fi
  for ns in $(our_namespaces); do
    if ns_exists "$ns"; then ip netns delete "$ns"; fi
  done
  # undo what `ip netns add` did to /run/netns, if it was us and nobody else uses it
  if [ -e "$BASE/run/created-run-netns-mount" ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    while mountpoint -q /run/netns 2>/dev/null; do umount /run/netns || break; done
  fi
  if [ -e "$BASE/run/created-run-netns-dir" ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    rmdir /run/netns 2>/dev/null || true
  fi
  rm -f "$BASE/run/created-run-netns-mount" "$BASE/run/created-run-netns-dir"
}

cmd_stop() {
  [ "$(id -u)" -eq 0 ] || { log "needs root"; exit 1; }
  do_stop
  if [ "${1:-}" = --purge ]; then
    rm -rf "$BASE"
    log "stopped, namespaces deleted, $BASE purged"
  else
    log "stopped, namespaces deleted ($BASE kept; --purge deletes it)"
  fi
}

cmd_status() {
  if is_up; then
    in_ctl sinfo -h -N -o 'node %N: %T, %c cpus'
    echo "SLURM_CONF=$CONF NETNS=/run/netns/$CTL_NS"
  else
    echo "down (SLURM_CONF=$CONF)"
    exit 1
  fi
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case $cmd in
    start|stop)
      mkdir -p "$(dirname "$BASE")"
      take_lock "$HERE/slurm_netns.sh"
      "cmd_$cmd" "$@" ;;
    status) cmd_status ;;
    *) echo "usage: $0 start | stop [--purge] | status" >&2; exit 2 ;;
  esac
}

main "$@"
