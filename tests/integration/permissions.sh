#!/usr/bin/env bash
# Real ownership and modes (default_permissions, allow_other): a non-root user reads status files,
# creates and changes its own instances, and cannot write another user's objects or root's files.
source "$(dirname "$0")/lib.sh"
start_daemon

mkdir $C/instances/roots
as_nobody cat $C/status >/dev/null || fail "nobody cannot read status"
as_nobody cat $C/instances/roots/ram_mb >/dev/null || fail "nobody cannot read an instance file"
as_nobody ls $C/instances/roots >/dev/null || fail "nobody cannot list an instance"
as_nobody cat $C/audit 2>/dev/null && fail "nobody read the audit trail"

out=$(as_nobody sh -c "echo 64 > $C/instances/roots/ram_mb" 2>&1) && fail "nobody wrote root's instance"
[[ "$out" == *"Permission denied"* ]] || fail "expected EACCES, got: $out"
expect_eq "$(cat $C/instances/roots/ram_mb)" 256 "root's instance unchanged"
as_nobody rmdir $C/instances/roots 2>/dev/null && fail "nobody removed root's instance (sticky instances/)"
as_nobody sh -c "echo compact > $C/ctl" 2>/dev/null && fail "nobody wrote constellation/ctl"
as_nobody sh -c "echo a=b > $C/nodes/node-a/labels" 2>/dev/null && fail "nobody wrote node labels"
as_nobody sh -c "echo start > $C/instances/roots/ctl" 2>/dev/null && fail "nobody wrote root's ctl"

# Its own instance: owned by it, writable by it.
as_nobody mkdir $C/instances/mine || fail "nobody cannot create an instance"
expect_eq "$(stat -c %u:%g $C/instances/mine)" "65534:65534" "instance owner"
expect_eq "$(stat -c %u $C/instances/mine/ram_mb)" "65534" "instance file owner"
as_nobody sh -c "echo 128 > $C/instances/mine/ram_mb" || fail "owner cannot write its instance"
expect_eq "$(cat $C/instances/mine/ram_mb)" 128 "owner's write applied"
as_nobody sh -c "echo 'sleep 1000' > $C/instances/mine/cmd" || fail "owner cannot set its cmd"
as_nobody sh -c "echo start > $C/instances/mine/ctl" || fail "owner cannot write its ctl"
# The process runs as the instance's owner.
expect_eq "$(stat -c %u /proc/$(cat $C/instances/mine/pid))" 65534 "the instance's process owner"
grep -q "^[0-9]* 65534 [0-9]* node-a instances/mine/ram_mb write ok 128$" $C/audit ||
  fail "audit records the owner's uid"
# Root may change anyone's objects (as on any file system).
echo 64 > $C/instances/mine/ram_mb
as_nobody rmdir $C/instances/mine || fail "owner cannot remove its instance"

stop_daemon
echo PASS
