#!/usr/bin/env bash
# 100 instances at once: created and started by concurrent writers, every one running as exactly
# one process of its own in its own cgroup, the tree answering meanwhile; then all removed at once,
# leaving no process, cgroup or file behind.
CN_TEST_TMP=/var/tmp
source "$(dirname "$0")/lib.sh"
start_daemon
N=100

# One sh as PID 1 that ends on SIGTERM, and its sleep.
cat > "$T/one.sh" <<EOF
set -e
mkdir $C/instances/\$1
printf 'cmd=trap "exit 0" TERM; sleep 1000 & wait\nram_mb=32\ncpu_percent=10\n' | cat > $C/instances/\$1/spec
echo start > $C/instances/\$1/ctl
EOF
started=$SECONDS
seq -f 'i%03g' $N | xargs -P 16 -n 1 sh "$T/one.sh" || fail "creating and starting $N instances"
echo "created and started $N instances in $((SECONDS - started)) s"
# The tree kept answering (and still does).
grep -q '^health ok$' $C/status || fail "status while $N instances run"

# Read with builtins only: a fork per check would cost more than the instances themselves here.
pids=()
for i in $(seq -f 'i%03g' $N); do
  read -r state < $C/instances/$i/state
  [[ "$state" == running ]] || fail "$i: $state"
  read -r p < $C/instances/$i/pid
  [[ -d /proc/$p ]] || fail "$i: pid $p is not alive"
  g=/sys/fs/cgroup/pids/$CGROUP_PARENT/node-a/$i
  [[ -d $g ]] || g=/sys/fs/cgroup/$CGROUP_PARENT/node-a/$i
  mapfile -t in_group < $g/cgroup.procs
  expect_eq "${#in_group[@]}" 2 "$i: processes in its cgroup (its sh and its sleep)"
  [[ " ${in_group[*]} " == *" $p "* ]] || fail "$i: pid $p is not in its own cgroup"
  pids+=("$p")
done
expect_eq "$(printf '%s\n' "${pids[@]}" | sort -u | wc -l)" $N "distinct processes"
expect_eq "$(ls $C/instances | wc -l)" $N "instances listed"

started=$SECONDS
seq -f "$C/instances/i%03g" $N | xargs -P 16 -n 10 rmdir || fail "removing $N instances"
echo "removed $N instances in $((SECONDS - started)) s"
[[ -z "$(ls $C/instances)" ]] || fail "instances left: $(ls $C/instances | head)"
for p in "${pids[@]}"; do [[ ! -e /proc/$p ]] || fail "process $p outlived its instance"; done
[[ -z "$(ls $D/instances)" ]] || fail "files left in the data dir: $(ls $D/instances | head)"
left=$({ find /sys/fs/cgroup/*/"$CGROUP_PARENT"/node-a /sys/fs/cgroup/"$CGROUP_PARENT"/node-a \
  -mindepth 1 -type d 2>/dev/null || true; } | wc -l)
expect_eq "$left" 0 "cgroups left"
stop_daemon
echo PASS
