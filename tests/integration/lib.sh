# Shared helpers for the integration tests: each test starts its own daemon on a temporary mount,
# drives it with shell commands, and stops it. Sourced by the test scripts.
set -euo pipefail

: "${CONSTELLATIOND:?set CONSTELLATIOND to the constellationd binary}"
# CN_TEST_TMP: where the test's directory goes. Instance tests use /var/tmp: an instance gets a
# private /tmp, which would hide a data dir or mount under the host's /tmp from inside it.
T=$(mktemp -d "${CN_TEST_TMP:-/tmp}/cn-test.XXXXXX")
chmod 755 "$T"  # non-root users in the tests must reach the mount
M=$T/m
D=$T/data
C=$M/constellation
LOG=$T/daemon.log
# Each test's daemon keeps its instances' control groups apart from every other daemon's (they all
# call their node node-a, and a runtime kills what it finds in its node's groups but does not know).
CGROUP_PARENT=cn-test/$(basename "$T")

fail() {
  echo "FAIL: $*" >&2
  echo "--- daemon log (last 30 lines) ---" >&2
  tail -30 "$LOG" >&2 || true
  exit 1
}

daemon_pid() { cat "$D/constellationd.pid" 2>/dev/null || true; }

start_daemon() {
  # Each start gets a fresh log, so checks on it see this run only.
  if [[ -f "$LOG" ]]; then cat "$LOG" >> "$LOG.old" && : > "$LOG"; fi
  "$CONSTELLATIOND" --data "$D" --mount "$M" --name node-a --log "$LOG" \
    --cgroup-parent "$CGROUP_PARENT" --stop-grace-s "${STOP_GRACE_S:-2}" "$@" ||
    fail "constellationd did not start"
}

# Stops the daemon with SIGTERM and checks it exited cleanly (no sanitizer report).
stop_daemon() {
  local pid
  pid=$(daemon_pid)
  kill -TERM "$pid"
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  ! kill -0 "$pid" 2>/dev/null || fail "daemon $pid did not stop within 10 s of SIGTERM"
  grep -q "stopped cleanly" "$LOG" || fail "daemon did not report a clean stop"
  ! grep -q "Sanitizer" "$LOG" || fail "sanitizer report in the daemon log"
  ! grep -q " $M fuse" /proc/mounts || fail "mount left behind after SIGTERM"
}

# Kills the daemon with SIGKILL and waits until it is gone.
kill9_daemon() {
  local pid
  pid=$(daemon_pid)
  kill -9 "$pid"
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  fail "daemon $pid survived SIGKILL"
}

# Kills whatever still runs in this test's control groups and removes them.
cleanup_cgroups() {
  local g pids
  for g in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
    [[ -d "$g" ]] || continue
    for _ in 1 2 3 4 5; do
      pids=$(find "$g" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
      [[ -z "$pids" ]] && break
      kill -9 $pids 2>/dev/null || true
      sleep 0.2
    done
    find "$g" -depth -type d -exec rmdir {} + 2>/dev/null || true
    # cn-test/ itself stays: another test's daemon may be creating its group under it right now.
  done
}

cleanup() {
  local pid
  pid=$(daemon_pid)
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  cleanup_cgroups
  # Disk quotas of instances are loop-mounted file systems under the data dir.
  { grep -o " $D/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l $m || true; done
  umount -l "$M" 2>/dev/null || true
  if mountpoint -q "$D" 2>/dev/null; then umount -l "$D"; fi  # a test's own small file system
  rm -rf "$T"
}
trap cleanup EXIT

as_nobody() { setpriv --reuid 65534 --regid 65534 --clear-groups "$@"; }

expect_eq() {  # actual expected what
  [[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
}

# write_fails FILE VALUE ERRTEXT: writing VALUE (plus a newline) in one write(2) must fail, and
# the message must name ERRTEXT.
write_fails() {
  local out
  printf '%s\n' "$2" > "$T/value"
  if out=$(cat "$T/value" 2>&1 > "$1"); then
    fail "writing '$2' to $1 succeeded; expected $3"
  fi
  [[ "$out" == *"$3"* ]] || fail "writing '$2' to $1: expected '$3', got '$out'"
}
