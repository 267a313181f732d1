#!/usr/bin/env bash
# Restart keeps everything; a stale mount of a killed daemon is cleared; a live mount, a locked data
# dir and bad flags are refused with a clear message.
source "$(dirname "$0")/lib.sh"
start_daemon

mkdir $C/instances/a $C/instances/b
echo 1000 > $C/instances/a/ram_mb
printf 'cmd=sleep 5\nenv=K=V\n' | cat > $C/instances/b/spec
echo start > $C/instances/b/ctl
printf 'zone=z1\n' > $C/nodes/node-a/labels
cluster=$(awk '$1 == "cluster" {print $2}' $C/status)
audit_lines=$(wc -l < $C/audit)

# Refusals while it runs.
out=$("$CONSTELLATIOND" --data "$D" --mount "$T/m2" --name node-a --log "$T/second.log" 2>&1) &&
  fail "a second daemon on the same data dir started"
[[ "$out" == *"locked by another constellationd"* ]] || fail "locked data dir message: $out"
out=$("$CONSTELLATIOND" --data "$T/data2" --mount "$M" --name node-a --log "$T/second.log" 2>&1) &&
  fail "a second daemon on a live mount started"
[[ "$out" == *"held by a live daemon"* ]] || fail "live mount message: $out"
out=$("$CONSTELLATIOND" --data "$T/data3" 2>&1) && fail "missing --mount accepted"
[[ "$out" == *"--mount are required"* ]] || fail "usage message: $out"
out=$("$CONSTELLATIOND" --data "$T/data3" --mount "$T/m3" --name "bad name" 2>&1) && fail "bad name accepted"
[[ "$out" == *"must match"* ]] || fail "bad name message: $out"
# Not `--help | grep -q`: grep may exit at the match before the daemon's last write (SIGPIPE),
# which pipefail reports as a failure once the text outgrows one stdio buffer.
[[ "$("$CONSTELLATIOND" --help)" == *--links* ]] || fail "--help documents the flags"

# The thread every commit passes through runs raised (--agent-nice, default -10).
agent_nice() {
  local t
  for t in /proc/$(daemon_pid)/task/*; do
    [[ "$(cat $t/comm)" == cn-raft ]] && awk '{print $19}' $t/stat
  done
}
expect_eq "$(agent_nice)" -10 "the agent thread's nice value"
out=$("$CONSTELLATIOND" --data "$D" --mount "$M" --agent-nice 20 2>&1) && fail "--agent-nice 20 accepted"
[[ "$out" == *"-20..19"* ]] || fail "bad --agent-nice message: $out"

# The chunk cache: 1/32 of the machine's memory by default, 256..2048 MiB; --chunk-cache-mb N.
chunk_cache() { grep -o 'chunk cache: [0-9]* MiB' "$LOG" | tail -1; }
mem_mb=$(($(awk '$1 == "MemTotal:" {print $2}' /proc/meminfo) / 1024))
want=$((mem_mb / 32 < 256 ? 256 : mem_mb / 32 > 2048 ? 2048 : mem_mb / 32))
expect_eq "$(chunk_cache)" "chunk cache: $want MiB" "the default chunk cache"
out=$("$CONSTELLATIOND" --data "$D" --mount "$M" --chunk-cache-mb 1x 2>&1) &&
  fail "--chunk-cache-mb 1x accepted"
[[ "$out" == *"--chunk-cache-mb: \"1x\" is not 0..1048576"* ]] || fail "bad --chunk-cache-mb message: $out"

# Clean restart keeps everything.
stop_daemon
start_daemon --agent-nice 0 --chunk-cache-mb 300
expect_eq "$(agent_nice)" 0 "--agent-nice 0 leaves the agent thread as inherited"
expect_eq "$(chunk_cache)" "chunk cache: 300 MiB" "--chunk-cache-mb 300"
expect_eq "$(cat $C/instances/a/ram_mb)" 1000 "ram_mb after restart"
expect_eq "$(cat $C/instances/b/cmd)" "sleep 5" "cmd after restart"
expect_eq "$(cat $C/instances/b/env)" "K=V" "env after restart"
grep -q '^desired=running$' $C/instances/b/spec || fail "desired state after restart"
expect_eq "$(cat $C/nodes/node-a/labels)" "zone=z1" "labels after restart"
expect_eq "$(awk '$1 == "cluster" {print $2}' $C/status)" "$cluster" "cluster id after restart"
(( $(wc -l < $C/audit) >= audit_lines )) || fail "audit lost lines over a restart"

# kill -9 leaves a stale mount; the next start clears it and keeps the state.
echo 2000 > $C/instances/a/ram_mb
kill9_daemon
out=$(ls $M 2>&1) && fail "expected a dead mount after kill -9"
[[ "$out" == *"not connected"* ]] || fail "stale mount: $out"
start_daemon
grep -q "clearing the stale mount" "$LOG" || fail "stale mount not reported"
expect_eq "$(cat $C/instances/a/ram_mb)" 2000 "acknowledged write survived kill -9"

stop_daemon
echo PASS
