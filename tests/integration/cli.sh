#!/usr/bin/env bash
# The constellation CLI against a real mount.
source "$(dirname "$0")/lib.sh"
CLI=${CONSTELLATION_CLI:?set CONSTELLATION_CLI to the constellation binary}
[[ -x $CLI ]] || fail "no CLI at $CLI"
export CONSTELLATION_MOUNT=$M
start_daemon

$CLI status | grep -q '^node node-a$' || fail "constellation status"
$CLI create instance web-1 --cmd 'sleep 1000' --ram-mb 512 --cpu-percent 50 --env PORT=80 \
  --env MODE=x --restart always ||
  fail "create instance"
expect_eq "$($CLI get instances/web-1/ram_mb)" 512 "get ram_mb"
expect_eq "$($CLI get instances/web-1/env)" "$(printf 'PORT=80\nMODE=x')" "get env"
$CLI set instances/web-1/ram_mb 1024 || fail "set"
expect_eq "$(cat $C/instances/web-1/ram_mb)" 1024 "set applied"
out=$($CLI set instances/web-1/ram_mb abc 2>&1) && fail "set abc succeeded"
expect_eq "$out" "constellation: $C/instances/web-1/ram_mb: Invalid argument: ram_mb: \"abc\" is not an integer (expected 0 or 4..4194304 MiB)" "CLI error line"
$CLI ls instances | grep -q '^web-1 ' || fail "ls instances"
$CLI ls nodes | grep -q '^node-a ' || fail "ls nodes"
out=$($CLI create instance bad --ram-mb 1 2>&1) && fail "create with a bad value succeeded"
[[ "$out" == *"Invalid argument"* ]] || fail "create error: $out"
[[ ! -e $C/instances/bad ]] || fail "a failed create left its instance behind"
$CLI start web-1 || fail "start"
grep -q '^desired=running$' $C/instances/web-1/spec || fail "start recorded"
expect_eq "$(cat $C/instances/web-1/state)" running "state after constellation start"
timeout 20 $CLI events --count 1 > $T/ev &
evpid=$!
# The reader may not have opened the stream yet; keep making events until it has one (bounded).
for i in $(seq 200); do
  [[ -s $T/ev ]] && break
  echo $((100 + i)) > $C/instances/web-1/cpu_percent
done
wait $evpid || fail "constellation events --count 1 failed"
grep -q 'instance_updated web-1' $T/ev || fail "events: $(cat $T/ev)"
$CLI rm instance web-1 || fail "rm"
[[ ! -e $C/instances/web-1 ]] || fail "rm left the instance"
out=$(CONSTELLATION_MOUNT=$T/nowhere $CLI status 2>&1) && fail "status without a mount succeeded"
[[ "$out" == *"no Constellation mount"* ]] || fail "no-mount message: $out"

stop_daemon
echo PASS
