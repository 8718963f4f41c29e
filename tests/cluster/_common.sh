# shellcheck shell=bash
# Helpers shared by slurm_local.sh and slurm_netns.sh.  Sourced, never run.
#
# Callers set LOG_TAG before sourcing.  Exit status convention of both scripts:
#   0 ok, 1 failure (a bug or a broken machine: see the logs), 2 usage,
#   3 "unavailable": a prerequisite is missing on this machine (not root, apt
#     impossible, no cgroup fs, port taken).  Exactly one line starting with
#     "<tag>: unavailable:" is printed on stderr; the pytest fixtures turn it
#     into a skip.

# The daemons live in /usr/sbin, which non-login shells may lack.
export PATH=/usr/sbin:/sbin:/usr/bin:/bin:$PATH

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { printf '%s: unavailable: %s\n' "$LOG_TAG" "$*" >&2; exit 3; }

# pid_alive PIDFILE: the pid file names a live process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# wait_until SECONDS CMD...: poll CMD every 0.1 s; false if it never succeeds.
wait_until() {
  local tries=$(( $1 * 10 )); shift
  while [ "$tries" -gt 0 ]; do
    "$@" && return 0
    sleep 0.1
    tries=$(( tries - 1 ))
  done
  return 1
}

# Serialise start/stop of one cluster (two test sessions, or a manual run
# beside a session).  fd 9 is closed for every daemon we start (`9<&-`) so no
# daemon holds the lock after this script exits.
take_lock() {
  exec 9<"$1"
  flock -w 600 9 || die "another start/stop of this cluster has held the lock on $1 for 600 s"
}

# slurmd 22.05 initialises its cgroup plugin even with proctrack/linuxproc and
# task/none, and dies with "No filesystem mounted on /sys/fs/cgroup" without one.
need_cgroupfs() {
  awk '$2 ~ "^/sys/fs/cgroup" { found = 1 } END { exit !found }' /proc/mounts \
    || unavailable "no cgroup filesystem mounted at /sys/fs/cgroup (slurmd 22.05 needs one)"
}

# ensure_packages LOGFILE CMD:PKG...: apt-get install the packages whose command
# is missing.  Debian's packages, --no-install-recommends (the slurm-wlm
# metapackage would pull 43 packages we do not need).  apt does not start any
# service here (no systemd, policy-rc.d), which is what we want.
ensure_packages() {
  local logfile=$1 item pkg missing=()
  shift
  for item in "$@"; do
    pkg=${item#*:}
    if ! command -v "${item%%:*}" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || unavailable "packages ${missing[*]} are missing and we are not root, so apt-get is impossible"
  command -v apt-get >/dev/null || unavailable "packages ${missing[*]} are missing and there is no apt-get"
  log "installing ${missing[*]} with apt-get (log: $logfile)"
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
  export DEBIAN_FRONTEND=noninteractive
  # Try with the current package lists first; refresh them only if that fails.
  if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$logfile" 2>&1; then
    { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >>"$logfile" 2>&1 \
      || unavailable "apt-get install ${missing[*]} failed (see $logfile)"
  fi
}

# port_free PORT: nothing listens on TCP PORT (in the current network namespace).
port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# start_munged DIR LOGFILE: a private munged whose key and socket live in DIR.
start_munged() {
  local dir=$1 logfile=$2
  mkdir -p "$dir"
  chmod 755 "$dir"   # munged refuses a socket dir without o+x
  [ -s "$dir/munge.key" ] || mungekey --create --keyfile="$dir/munge.key"
  chmod 600 "$dir/munge.key"
  munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
         --pid-file="$dir/munged.pid" --log-file="$logfile" \
         --seed-file="$dir/munged.seed" 9<&-
  wait_until 5 test -S "$dir/munge.socket" || die "munged did not create its socket (see $logfile)"
  munge -S "$dir/munge.socket" -n | unmunge -S "$dir/munge.socket" >/dev/null \
    || die "munge round trip failed (see $logfile)"
}

# stop_pidfiles SECONDS PIDFILE...: SIGTERM every live process named by a pid
# file at once (each slurm daemon takes ~2 s to exit), wait up to SECONDS, then
# SIGKILL what is left.  Only these pids are ever signalled.
stop_pidfiles() {
  local grace=$1 f pid pids=()
  shift
  for f in "$@"; do
    [ -s "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  if [ "${#pids[@]}" -gt 0 ] && ! wait_until "$grace" none_alive "${pids[@]}"; then
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for ${grace}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    wait_until 5 none_alive "${pids[@]}" || true
  fi
  rm -f "$@"
}

none_alive() {
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 1; done
  return 0
}
