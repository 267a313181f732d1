#!/usr/bin/env bash
# Instances run for real: the issue's transcript exactly (a web server under limits, tail -f of its
# log, a live limit change, stop, rmdir), the events of its lifecycle, a command that does not
# exist, isolation (namespaces, hostname, private /tmp, isolated network, env), a .rads-style script
# run through --interpreter, and a program inside an instance driving the platform through
# /constellation.
CN_TEST_TMP=/var/tmp  # an instance's private /tmp would hide a test dir under /tmp from it
source "$(dirname "$0")/lib.sh"

# A stand-in for an interpreter (`constellationd --interpreter rads=PATH`): prints what it was
# given and the script's first line, then stays up.
cat > "$T/rads" <<'EOF'
#!/bin/sh
echo "interpreter got: $*"
echo "script says: $(head -n 1 "$1")"
exec sleep 1000
EOF
chmod 755 "$T/rads"
echo 'print "hello from rads"' > "$T/hello.rads"
start_daemon --interpreter rads="$T/rads"

# wait_for DESCRIPTION COMMAND...: polls COMMAND until it succeeds (bounded: 30 s).
wait_for() {
  local what=$1 end=$((SECONDS + 30))
  shift
  while ((SECONDS < end)); do
    "$@" && return 0
    sleep 0.05
  done
  fail "timed out waiting for: $what"
}
in_log() { grep -q -- "$2" "$C/instances/$1/log"; }
state_is() { [[ "$(cat "$C/instances/$1/state")" == "$2" ]]; }
# The v1 or v2 file of an instance's cgroup: cgfile CONTROLLER V1FILE V2FILE INSTANCE.
cgfile() {
  if [[ -d /sys/fs/cgroup/$1/$CGROUP_PARENT ]]; then
    echo "/sys/fs/cgroup/$1/$CGROUP_PARENT/node-a/$4/$2"
  else
    echo "/sys/fs/cgroup/$CGROUP_PARENT/node-a/$4/$3"
  fi
}
PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# One HTTP request; succeeds once the server answered (any status).
fetch() {
  { exec 3<>/dev/tcp/127.0.0.1/$PORT; } 2>/dev/null || return 1
  printf 'GET /%s HTTP/1.0\r\n\r\n' "$1" >&3
  timeout 10 head -c 12 <&3 | grep -q HTTP
  local rc=$?
  exec 3<&-
  return $rc
}

cat "$C/events" > "$T/events" &
events_pid=$!
events_open() { ls -l /proc/$events_pid/fd 2>/dev/null | grep -q "$C/events"; }
wait_for "the events reader" events_open

# --- The transcript, as the issue writes it --------------------------------------------------------
cd $C/instances && mkdir web-1 && cd web-1
echo "python3 -m http.server $PORT" > cmd
echo 128 > ram_mb; echo 25 > cpu_percent; echo on-failure > restart
echo start > ctl
expect_eq "$(cat state)" running "state after start"
stats=$(cat stats)
for key in cpu_percent ram_mb ram_peak_mb disk_mb restarts uptime_s oom_kills backoff_ms; do
  grep -Eq "^$key [0-9.]+$" <<< "$stats" || fail "stats has no $key: $stats"
done
pid=$(cat pid)
[[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" || fail "pid $pid is not a live process"
expect_eq "$(cat exit_code)" "" "exit_code while running"
wait_for "the server to answer" fetch first
# tail -f follows stdout and stderr as they are written (the server logs each request to stderr).
tail -f log > "$T/tail" 2>&1 &
tail_pid=$!
wait_for "tail -f to print the first request" grep -q "GET /first" "$T/tail"
fetch second-request
wait_for "tail -f to follow a new request" grep -q "GET /second-request" "$T/tail"
fetch third-request
wait_for "tail -f to follow another request" grep -q "GET /third-request" "$T/tail"
kill $tail_pid
echo 256 > ram_mb  # applies to the running instance, no restart
expect_eq "$(cat "$(cgfile memory memory.limit_in_bytes memory.max web-1)")" 268435456 \
  "memory limit after a live change"
expect_eq "$(cat pid)" "$pid" "pid after a live limit change (no restart)"
expect_eq "$(cat state)" running "state after a live limit change"
echo stop > ctl; cat state > "$T/state"  # stopped (SIGTERM, then SIGKILL after the grace period)
expect_eq "$(cat "$T/state")" stopped "state right after stop"
! kill -0 "$pid" 2>/dev/null || fail "the server still runs after stop"
cd .. && rmdir web-1
[[ ! -e $C/instances/web-1 ]] || fail "rmdir left the instance"
[[ ! -e $D/instances/web-1 ]] || fail "rmdir left the instance's files in the data dir"
[[ ! -e $(dirname "$(cgfile memory memory.limit_in_bytes memory.max web-1)") ]] ||
  fail "rmdir left the instance's cgroup"
cd "$T"

# Every transition was an event, in order.
wait_for "the stop events" grep -q "instance_stopped web-1" "$T/events"
for e in "instance_created web-1" "instance_ctl web-1 verb=start" "instance_starting web-1" \
  "instance_started web-1 state=running" "instance_updated web-1 fields=ram_mb" \
  "instance_ctl web-1 verb=stop" "instance_stopping web-1 state=stopping" \
  "instance_stopped web-1 state=stopped" "instance_removed web-1"; do
  grep -q " $e" "$T/events" || fail "no event '$e' in: $(cat "$T/events")"
done
order=$(grep -o -E "instance_(starting|started|stopping|stopped) web-1" "$T/events" | tr '\n' ' ')
expect_eq "$order" "instance_starting web-1 instance_started web-1 instance_stopping web-1 instance_stopped web-1 " \
  "transition order"

# --- A command that does not exist, or cannot be executed -----------------------------------------
mkdir $C/instances/nope
echo 'no-such-command --flag' > $C/instances/nope/cmd
write_fails $C/instances/nope/ctl start "No such file or directory"
expect_eq "$(cat $C/instances/nope/state)" "failed exec: no-such-command: No such file or directory" \
  "state of a missing command"
grep -q "start failed: exec: no-such-command: No such file or directory" $C/instances/nope/error ||
  fail "error file: $(cat $C/instances/nope/error)"
echo 'echo hi' > "$T/notexec" && chmod 644 "$T/notexec"
echo "$T/notexec" > $C/instances/nope/cmd
write_fails $C/instances/nope/ctl start "Permission denied"
[[ "$(cat $C/instances/nope/state)" == "failed exec: $T/notexec: Permission denied" ]] ||
  fail "state of a non-executable command: $(cat $C/instances/nope/state)"
rmdir $C/instances/nope

# --- Isolation: namespaces, hostname, /tmp, network, env, working directory -------------------------
touch /tmp/cn-host-only-$$
mkdir $C/instances/probe
cat > "$T/probe.sh" <<'EOF'
echo "pid=$$ host=$(hostname) inst=$CONSTELLATION_INSTANCE node=$CONSTELLATION_NODE k=$K"
echo "tmp=$(ls -A /tmp | wc -l) cwd=$(pwd)"
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ,)"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo done
exec sleep 1000
EOF
printf 'cmd=sh %s\nenv=K=v 1\nnetwork=isolated\n' "$T/probe.sh" | cat > $C/instances/probe/spec
echo start > $C/instances/probe/ctl
wait_for "the probe's report" in_log probe done
line=$(cat $C/instances/probe/log)
grep -q "pid=1 host=probe inst=probe node=node-a k=v 1" <<< "$line" || fail "probe: $line"
grep -q "tmp=0 cwd=$D/instances/probe/work" <<< "$line" || fail "probe /tmp or cwd: $line"
grep -q "ifaces=lo,$" <<< "$line" || fail "isolated network shows more than lo: $line"
[[ "$line" =~ procs=([0-9]+) ]] && ((BASH_REMATCH[1] < 10)) ||
  fail "the PID namespace shows the host's processes: $line"
echo host > $C/instances/probe/network
echo restart > $C/instances/probe/ctl
second_report() { (($(grep -c done $C/instances/probe/log) >= 2)); }
wait_for "the probe's second report" second_report
[[ "$(grep ifaces= $C/instances/probe/log | tail -1)" != "ifaces=lo," ]] ||
  fail "network=host still isolated"
rm -f /tmp/cn-host-only-$$
rmdir $C/instances/probe &

# --- A .rads script runs with the configured interpreter -------------------------------------------
mkdir $C/instances/script
echo "$T/hello.rads world" > $C/instances/script/cmd
echo start > $C/instances/script/ctl
wait_for "the interpreter's output" in_log script "script says"
grep -q "interpreter got: $T/hello.rads world" $C/instances/script/log ||
  fail "interpreter arguments: $(cat $C/instances/script/log)"
grep -q 'script says: print "hello from rads"' $C/instances/script/log ||
  fail "interpreter read the script: $(cat $C/instances/script/log)"
echo "$T/missing.rads" > $C/instances/script/cmd
write_fails $C/instances/script/ctl restart "No such file or directory"
rmdir $C/instances/script

# --- A program inside an instance drives the platform with file I/O --------------------------------
mkdir $C/instances/target
cat > "$T/driver.sh" <<'EOF'
cat /constellation/status | head -n 1
echo 96 > /constellation/instances/target/ram_mb && echo "set ram_mb"
mkdir /constellation/instances/child && echo "made child"
echo 'sleep 1000' > /constellation/instances/child/cmd
echo start > /constellation/instances/child/ctl && echo "started child"
echo "child is $(cat /constellation/instances/child/state)"
echo hello > /cluster/from-driver && echo "wrote cluster"
exec sleep 1000
EOF
mkdir $C/instances/driver
echo "sh $T/driver.sh" > $C/instances/driver/cmd
echo start > $C/instances/driver/ctl
wait_for "the driver to finish" in_log driver "wrote cluster"
grep -q "^cluster " $C/instances/driver/log || fail "driver read status: $(cat $C/instances/driver/log)"
grep -q "child is running" $C/instances/driver/log || fail "driver: $(cat $C/instances/driver/log)"
expect_eq "$(cat $C/instances/target/ram_mb)" 96 "ram_mb written from inside an instance"
expect_eq "$(cat $C/instances/child/state)" running "child started from inside an instance"
expect_eq "$(cat $M/cluster/from-driver)" hello "file written to /cluster from inside"
for n in driver child target; do rmdir $C/instances/$n & done
wait_rmdirs() { ! ls $C/instances | grep -q .; }
wait_for "the instances to be removed" wait_rmdirs

kill $events_pid
wait $events_pid 2>/dev/null || true
stop_daemon
echo PASS
