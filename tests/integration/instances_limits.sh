#!/usr/bin/env bash
# Limits of instances, enforced by their cgroup and read back from its own accounting: exceeding
# ram_mb OOM-kills (state `failed oom`, oom_kills counted); cpu_percent caps a busy loop; a fork
# bomb stops at pids_max and harms nothing else; disk_mb makes writes past it fail with ENOSPC; and
# every limit changes live, on the running process.
CN_TEST_TMP=/var/tmp  # an instance's private /tmp would hide a test dir under /tmp from it
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
in_log() { grep -q -- "$2" "$C/instances/$1/log"; }

# The instance's own cgroup accounting, v1 or v2 (detected, like the daemon does).
if [[ -d /sys/fs/cgroup/memory/$CGROUP_PARENT ]]; then
  V=1
  cg() { echo "/sys/fs/cgroup/$1/$CGROUP_PARENT/node-a/$2"; }
else
  V=2
  cg() { echo "/sys/fs/cgroup/$CGROUP_PARENT/node-a/$2"; }
fi
memory_limit() { if ((V == 1)); then cat "$(cg memory "$1")/memory.limit_in_bytes"; else cat "$(cg - "$1")/memory.max"; fi; }
cpu_quota() { if ((V == 1)); then cat "$(cg cpu "$1")/cpu.cfs_quota_us"; else cut -d' ' -f1 "$(cg - "$1")/cpu.max"; fi; }
cpu_usage_ns() {
  if ((V == 1)); then cat "$(cg cpuacct "$1")/cpuacct.usage"
  else echo $(($(awk '$1 == "usage_usec" { print $2 }' "$(cg - "$1")/cpu.stat") * 1000)); fi
}
pids_file() { if ((V == 1)); then cat "$(cg pids "$1")/$2"; else cat "$(cg - "$1")/$2"; fi; }

# --- RAM: exceeding ram_mb OOM-kills the instance ----------------------------------------------------
cat > "$T/hog.py" <<'EOF'
import time
chunks = []
print("allocating", flush=True)
while True:
    chunks.append(bytearray(8 << 20))  # touched: bytearray zero-fills
    time.sleep(0.01)
EOF
mkdir $C/instances/hog
printf 'cmd=/usr/bin/python3 %s\nram_mb=48\n' "$T/hog.py" | cat > $C/instances/hog/spec
echo start > $C/instances/hog/ctl
wait_for "the OOM kill" state_is hog "failed oom"
(($(stat_of hog oom_kills) >= 1)) || fail "oom_kills not counted: $(cat $C/instances/hog/stats)"
(($(stat_of hog ram_peak_mb) <= 48 + 1)) || fail "peak above the limit: $(cat $C/instances/hog/stats)"
expect_eq "$(stat_of hog restarts)" 0 "restarts with restart=never"
expect_eq "$(cat $C/instances/hog/pid)" "" "no pid after the OOM kill"

# --- CPU: cpu_percent=25 holds a busy loop to about a quarter of a core -----------------------------
mkdir $C/instances/spin
printf 'cmd=sh -c "while :; do :; done"\ncpu_percent=25\n' | cat > $C/instances/spin/spec
echo start > $C/instances/spin/ctl
spin_pid=$(cat $C/instances/spin/pid)
# Measured from the cgroup's own CPU accounting over a window of wall time. The quota allows 25 ms
# per 100 ms period; the bound leaves a wide margin (40 %, and one period either side).
u0=$(cpu_usage_ns spin) t0=$(date +%s%N)
sleep 2  # the measuring window, not a synchronisation
u1=$(cpu_usage_ns spin) t1=$(date +%s%N)
used=$((u1 - u0)) wall=$((t1 - t0))
((used * 100 <= wall * 40 + 200000000)) || fail "cpu_percent=25 used $((used * 100 / wall)) % of a core"
((used > 0)) || fail "the busy loop got no CPU at all"
expect_eq "$(cpu_quota spin)" 25000 "cfs quota for cpu_percent=25"
# stats samples the same accounting every second.
cpu_stat=$(stat_of spin cpu_percent)
awk -v c="$cpu_stat" 'BEGIN { exit !(c <= 40) }' || fail "stats cpu_percent $cpu_stat above the cap"
# Live: raise it, and lift it; the same process keeps running.
echo 150 > $C/instances/spin/cpu_percent
expect_eq "$(cpu_quota spin)" 150000 "cfs quota after a live change"
echo 0 > $C/instances/spin/cpu_percent
expect_eq "$(cpu_quota spin)" -1 "no quota for cpu_percent=0"
echo 300 > $C/instances/spin/ram_mb
expect_eq "$(memory_limit spin)" $((300 << 20)) "memory limit after a live change"
echo 64 > $C/instances/spin/pids_max
expect_eq "$(pids_file spin pids.max)" 64 "pids limit after a live change"
expect_eq "$(cat $C/instances/spin/pid)" "$spin_pid" "pid after live limit changes"
echo "kill KILL" > $C/instances/spin/ctl
wait_for "the spinner to die" state_is spin "failed signal SIGKILL"

# --- pids: a fork bomb stops at pids_max and harms nothing else -------------------------------------
# The instance's own process must not fork once the bomb has gone off: a shell that cannot fork
# `sleep` exits 2 ("Cannot fork"), and whether it got there before the bomb filled pids.max was a
# race the test lost under load. It forks once (the bomb, while it is alone), then execs.
cat > "$T/bomb.sh" <<'EOF'
echo bombing
bomb() { bomb | bomb & }
bomb
exec sleep 1000
EOF
mkdir $C/instances/bomb
printf 'cmd=sh %s\npids_max=32\nram_mb=256\n' "$T/bomb.sh" | cat > $C/instances/bomb/spec
echo start > $C/instances/bomb/ctl
at_limit() {
  if ((V == 1)); then (($(awk '{ print $2 }' <<< "$(pids_file bomb pids.events)") > 0))
  else (($(awk '$1 == "max" { print $2 }' <<< "$(pids_file bomb pids.events)") > 0)); fi
}
wait_for "the fork bomb to hit pids.max" at_limit
(($(pids_file bomb pids.current) <= 32)) || fail "more than pids_max processes"
(($(stat_of bomb pids) <= 32)) || fail "stats shows more than pids_max: $(stat_of bomb pids)"
# Everything else still works: the host forks, another instance starts, the tree answers.
mkdir $C/instances/canary
echo 'sleep 1000' > $C/instances/canary/cmd
echo start > $C/instances/canary/ctl
expect_eq "$(cat $C/instances/canary/state)" running "an instance beside the fork bomb"
expect_eq "$(/bin/echo host-forks)" host-forks "the host forks beside the fork bomb"
echo stop > $C/instances/bomb/ctl
expect_eq "$(cat $C/instances/bomb/state)" stopped "fork bomb stopped"
expect_eq "$(pids_file bomb pids.current)" 0 "nothing of the fork bomb is left"

# --- disk: writes past disk_mb fail with ENOSPC; the instance keeps running -------------------------
cat > "$T/fill.sh" <<'EOF'
dd if=/dev/zero of=big bs=1M count=32 2>&1
echo "dd-exit=$?"
df -k . | tail -n 1
exec sleep 1000
EOF
mkdir $C/instances/disk
printf 'cmd=sh %s\ndisk_mb=16\n' "$T/fill.sh" | cat > $C/instances/disk/spec
echo start > $C/instances/disk/ctl
wait_for "dd to finish" in_log disk "dd-exit="
in_log disk "No space left on device" || fail "no ENOSPC: $(cat $C/instances/disk/log)"
in_log disk "dd-exit=1" || fail "dd did not fail: $(cat $C/instances/disk/log)"
expect_eq "$(cat $C/instances/disk/state)" running "the instance keeps running after ENOSPC"
used=$(stat_of disk disk_mb)
((used >= 8 && used <= 17)) || fail "disk_mb in stats: $used"
# The quota is the instance's writable space: the data dir's own file system is untouched.
[[ ! -e $D/instances/disk/work/big ]] || mountpoint -q $D/instances/disk/work ||
  fail "the instance wrote into the node's file system"

for n in hog spin bomb canary disk; do rmdir $C/instances/$n & done
wait
[[ -z "$(ls $C/instances)" ]] || fail "instances left: $(ls $C/instances)"
stop_daemon
echo PASS
