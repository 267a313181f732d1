#!/usr/bin/env bash
# A full disk: writes fail with ENOSPC and change nothing, reads keep working, writes work again
# once space is freed, and nothing acknowledged is lost across a restart.
source "$(dirname "$0")/lib.sh"
mkdir -p "$D"
mount -t tmpfs -o size=16m tmpfs "$D"
start_daemon --reserve-mb 4

mkdir $C/instances/a
echo 100 > $C/instances/a/ram_mb
# Leave about 2 MiB free: below the 4 MiB reserve.
avail_kb=$(df --output=avail -k "$D" | tail -1)
head -c $(( (avail_kb - 2048) * 1024 )) /dev/zero > "$D/filler"
out=$(bash -c "echo 200 > $C/instances/a/ram_mb" 2>&1) && fail "a write succeeded on a full disk"
[[ "$out" == *"No space left on device"* ]] || fail "expected ENOSPC, got: $out"
grep -q "MiB free, below the 4 MiB" $C/instances/a/error || fail "error file: $(cat $C/instances/a/error)"
expect_eq "$(cat $C/instances/a/ram_mb)" 100 "value unchanged by the refused write"
grep -q '^health ok$' $C/status || fail "status unreadable on a full disk"
out=$(mkdir $C/instances/b 2>&1) && fail "mkdir succeeded on a full disk"

rm "$D/filler"
echo 300 > $C/instances/a/ram_mb || fail "write after freeing space"
expect_eq "$(cat $C/instances/a/ram_mb)" 300 "write applied after freeing space"
stop_daemon
start_daemon --reserve-mb 4
expect_eq "$(cat $C/instances/a/ram_mb)" 300 "value after restart"
stop_daemon
echo PASS
