#!/usr/bin/env bash
# Restart policies with their back-off, and the daemon's life around running instances: after
# kill -9 and a restart every instance is found again (same process, never a second one; its
# /constellation and /cluster lead to the new daemon's mounts), one that
# died meanwhile is restarted by its policy or reported lost, nothing is left a zombie; a clean
# stop stops them (and the next start brings them back), or with --leave-instances leaves them
# running for the next daemon to adopt.
#
# Orphans are reaped by the machine's init (systemd, tini...). When the daemon is killed its
# instances become init's children; this machine's PID 1 does not reap, so the test runs as a child
# subreaper, standing in for a real init.
if [[ -z "${CN_SUBREAPER:-}" ]]; then
  export CN_SUBREAPER=1
  exec /usr/bin/python3 -c 'import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, kept across execv
os.execv("/bin/bash", ["bash"] + sys.argv[1:])' "$0" "$@"
fi
CN_TEST_TMP=/var/tmp
source "$(dirname "$0")/lib.sh"
start_daemon

wait_for() {  # DESCRIPTION COMMAND...: polls COMMAND until it succeeds (bounded: 30 s)
  local what=$1 end=$((SECONDS + 30))
  shift
  while ((SECONDS < end)); do
    "$@" && return 0
    sleep 0.05
  done
  fail "timed out waiting for: $what"
}
stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$C/instances/$1/stats"; }
state_is() { [[ "$(cat "$C/instances/$1/state")" == "$2" ]]; }
gone() { [[ ! -e /proc/$1 ]]; }  # neither running nor a zombie
procs_of() {  # the processes in an instance's cgroup (v1: the pids hierarchy; v2: its group)
  local g=/sys/fs/cgroup/pids/$CGROUP_PARENT/node-a/$1
  [[ -d $g ]] || g=/sys/fs/cgroup/$CGROUP_PARENT/node-a/$1
  cat "$g/cgroup.procs"
}
# A process that stops at once on SIGTERM (as PID 1 it needs a handler for that); the runtime runs
# a command with shell syntax as /bin/sh -c CMD, so this is one sh (PID 1) and its sleep.
SERVE='trap "exit 0" TERM; sleep 1000 & wait'
make() {  # NAME RESTART CMD: creates and starts an instance
  mkdir $C/instances/$1
  printf 'cmd=%s\nrestart=%s\n' "$3" "$2" | cat > $C/instances/$1/spec
  echo start > $C/instances/$1/ctl
}

# --- Restart policies -------------------------------------------------------------------------------
make never never "sh -c 'echo run; exit 3'"
wait_for "never to exit" state_is never "exited 3"
expect_eq "$(cat $C/instances/never/exit_code)" 3 "exit_code"
expect_eq "$(stat_of never restarts)" 0 "restarts with restart=never"

make flaky on-failure "sh -c 'echo run; exit 3'"
restarted() { (($(stat_of flaky restarts) >= 3)); }
wait_for "three automatic restarts" restarted
# Back-off doubles from 100 ms: the third restart waited 400 ms (visible in stats).
(($(stat_of flaky backoff_ms) >= 400)) || fail "back-off: $(cat $C/instances/flaky/stats)"
(($(grep -c '^run$' $C/instances/flaky/log) >= 4)) || fail "runs: $(cat $C/instances/flaky/log)"
grep -q '^restart_in_ms [0-9]*$' $C/instances/flaky/stats || fail "no restart_in_ms in stats"
echo stop > $C/instances/flaky/ctl
expect_eq "$(cat $C/instances/flaky/state)" stopped "a stop cancels the pending restart"
restarts=$(stat_of flaky restarts)

make clean on-failure "sh -c 'exit 0'"
wait_for "a clean exit" state_is clean "exited 0"
expect_eq "$(stat_of clean restarts)" 0 "on-failure does not restart a clean exit"

make forever always "sh -c 'echo run; exit 0'"
again() { (($(stat_of forever restarts) >= 1)); }
wait_for "always to restart a clean exit" again
echo stop > $C/instances/forever/ctl
for n in never flaky clean forever; do rmdir $C/instances/$n; done

# --- kill -9 of the daemon with instances running ----------------------------------------------------
make a never "$SERVE"
make b on-failure "$SERVE"
make lost-restart on-failure "$SERVE"
make lost-never never "$SERVE"
pa=$(cat $C/instances/a/pid) pb=$(cat $C/instances/b/pid)
pc=$(cat $C/instances/lost-restart/pid) pd=$(cat $C/instances/lost-never/pid)
kill9_daemon
kill -0 $pa && kill -0 $pb || fail "instances died with the daemon"
kill -9 $pc $pd  # these end while no daemon watches them
wait_for "the lost processes to be reaped" gone $pc
start_daemon
expect_eq "$(cat $C/instances/a/state)" running "a after the restart"
expect_eq "$(cat $C/instances/a/pid)" $pa "a is the same process (adopted, not started again)"
expect_eq "$(cat $C/instances/b/pid)" $pb "b is the same process"
expect_eq "$(procs_of a | wc -l)" 2 "a's cgroup: its sh and its sleep, nothing duplicated"
grep -q "instance_adopted\|adopted a pid $pa" $LOG || fail "no adoption in the log"
# Inside an adopted instance /constellation and /cluster are this daemon's mounts again, not the
# dead one's (which answer ENOTCONN).
expect_eq "$(nsenter -t $pb -m cat /constellation/instances/b/state 2>&1)" running \
  "the new daemon's tree seen from inside an adopted instance"
nsenter -t $pb -m ls /cluster >/dev/null || fail "/cluster inside an adopted instance"
expect_eq "$(cat $C/instances/lost-never/state)" "failed lost" "an instance that died unwatched"
wait_for "the lost instance to be restarted by its policy" state_is lost-restart running
[[ "$(cat $C/instances/lost-restart/pid)" != "$pc" ]] || fail "lost-restart kept a dead pid"
expect_eq "$(stat_of lost-restart restarts)" 1 "restarts of the lost instance"
# An adopted process is still under control: stop it; it is reaped, not left a zombie.
echo stop > $C/instances/a/ctl
expect_eq "$(cat $C/instances/a/state)" stopped "stop of an adopted instance"
wait_for "the adopted process to be reaped" gone $pa
echo start > $C/instances/a/ctl
pa=$(cat $C/instances/a/pid)

# --- A clean stop stops the instances; the next start brings them back ------------------------------
stop_daemon
gone $pa && gone $pb || fail "a clean stop left instances running"
start_daemon
expect_eq "$(cat $C/instances/a/state)" running "a is back after a clean restart"
expect_eq "$(cat $C/instances/lost-never/state)" "failed lost" "a failed instance stays failed"
[[ "$(cat $C/instances/a/pid)" != "$pa" ]] || fail "a kept its old pid over a clean stop"
pa=$(cat $C/instances/a/pid)

# --- --leave-instances: a clean stop leaves them running; the next daemon adopts them ----------------
stop_daemon  # started without the flag: stops them
start_daemon --leave-instances
pa=$(cat $C/instances/a/pid) pb=$(cat $C/instances/b/pid)
stop_daemon
grep -q "leaving instances running" $LOG || fail "the daemon did not say it left them"
kill -0 $pa && kill -0 $pb || fail "--leave-instances stopped instances"
start_daemon
expect_eq "$(cat $C/instances/a/pid)" $pa "a adopted after --leave-instances"
expect_eq "$(cat $C/instances/b/state)" running "b adopted after --leave-instances"

for n in a b lost-restart lost-never; do rmdir $C/instances/$n; done
gone $pa && gone $pb || fail "rmdir left processes"
stop_daemon
echo PASS
