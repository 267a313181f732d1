#!/usr/bin/env bash
# The constellation CLI against a real mount.
CN_TEST_TMP=/var/tmp  # instances run here: their private /tmp would hide a test dir under /tmp
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
# run: create + configure + start; the command's arguments reach it as given.
$CLI run job --ram-mb 64 --cpu-percent 50 --restart on-failure --env GREETING=hello \
  -- sh -c 'echo "$GREETING from $0 $1"; exec sleep 1000' 'first arg' second || fail "run"
expect_eq "$(cat $C/instances/job/state)" running "state after constellation run"
expect_eq "$(cat $C/instances/job/ram_mb)" 64 "run --ram-mb"
expect_eq "$(cat $C/instances/job/restart)" on-failure "run --restart"
for _ in $(seq 200); do grep -q hello $C/instances/job/log && break; sleep 0.05; done
expect_eq "$($CLI logs job)" "hello from first arg second" "constellation logs"
# logs -f follows what the instance writes next.
$CLI run talker -- sh -c 'i=0; while [ $i -lt 600 ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
timeout 20 $CLI logs talker -f > $T/follow &
follow=$!
for _ in $(seq 300); do grep -q "line 20" $T/follow 2>/dev/null && break; sleep 0.05; done
kill $follow 2>/dev/null || true
grep -q "line 20" $T/follow || fail "logs -f did not follow: $(tail -3 $T/follow)"
$CLI top --once > $T/top
grep -Eq '^job +running ' $T/top || fail "top: $(cat $T/top)"
grep -Eq '^talker +running ' $T/top || fail "top: $(cat $T/top)"
$CLI stop job || fail "stop"
expect_eq "$(cat $C/instances/job/state)" stopped "state after constellation stop"
$CLI restart job || fail "restart"
expect_eq "$(cat $C/instances/job/state)" running "state after constellation restart"
out=$($CLI run missing -- no-such-command 2>&1) && fail "run of a missing command succeeded"
[[ "$out" == *"No such file or directory: start failed: exec: no-such-command"* ]] ||
  fail "run error: $out"
expect_eq "$(cat $C/instances/missing/state)" "failed exec: no-such-command: No such file or directory" \
  "state after a failed run"
$CLI rm instance job talker missing || fail "rm of run instances"
$CLI rm instance web-1 || fail "rm"
[[ ! -e $C/instances/web-1 ]] || fail "rm left the instance"
out=$(CONSTELLATION_MOUNT=$T/nowhere $CLI status 2>&1) && fail "status without a mount succeeded"
[[ "$out" == *"no Constellation mount"* ]] || fail "no-mount message: $out"

stop_daemon
echo PASS
