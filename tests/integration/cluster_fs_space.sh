#!/usr/bin/env bash
# cluster/ and space: unreferenced chunks are collected; a full disk gives ENOSPC and a file
# system that still works once space is freed.
source "$(dirname "$0")/lib.sh"
mkdir -p "$D"
mount -t tmpfs -o size=48m tmpfs "$D"
start_daemon --reserve-mb 4 --chunk-grace-s 1
F=$M/cluster
chunks() { find "$D/chunks" -path "$D/chunks/tmp" -prune -o -path "$D/chunks/quarantine" -prune -o -type f -name '????????????????????????????????' -print | wc -l; }

head -c $((8 * 1024 * 1024)) /dev/urandom > $T/eight
cp $T/eight $F/eight
expect_eq "$(chunks)" 2 "an 8 MiB file is two chunks"
rm $F/eight
sleep 1.1  # the grace period given with --chunk-grace-s 1: chunks younger than it are kept
echo gc > $C/ctl
expect_eq "$(chunks)" 0 "chunks of a removed file are collected"

# Fill the disk: the write or close fails with ENOSPC, nothing is half-committed.
echo keep > $F/keep
out=$(head -c $((60 * 1024 * 1024)) /dev/urandom | dd of=$F/big bs=1M status=none 2>&1) &&
  fail "a 60 MiB write fit on a 48 MiB disk"
[[ "$out" == *"No space left"* ]] || fail "expected ENOSPC, got: $out"
expect_eq "$(cat $F/keep)" keep "other files still read"
rm -f $F/big
sleep 1.1
echo gc > $C/ctl
echo after > $F/after || fail "writes work again once space is freed"
expect_eq "$(cat $F/after)" after "new file after ENOSPC"
stop_daemon
start_daemon --reserve-mb 4 --chunk-grace-s 1
expect_eq "$(cat $F/keep)" keep "keep after restart"
expect_eq "$(cat $F/after)" after "after after restart"
stop_daemon
echo PASS
