#!/usr/bin/env bash
# Create, set, read back, refuse bad values, spec, ctl, nodes, rmdir: the control tree end to end.
source "$(dirname "$0")/lib.sh"
start_daemon

[[ -d $M/cluster ]] || fail "cluster/ missing"
expect_eq "$(ls $M/cluster | wc -l)" 0 "cluster/ is empty"
expect_eq "$(ls $C | tr '\n' ' ')" "audit ctl error events instances nodes status " "constellation/ listing"
grep -q '^node node-a$' $C/status || fail "status names the node"
grep -q '^cluster [0-9a-f]\{16\}$' $C/status || fail "status has a cluster id"
grep -q '^health ok$' $C/status || fail "status health"
expect_eq "$(ls $C/nodes)" node-a "nodes/ lists this node"
expect_eq "$(cat $C/nodes/node-a/status)" alive "node status"
expect_eq "$(cat $C/nodes/node-a/cpu_cores)" "$(nproc)" "node cpu_cores"

# Create and defaults.
mkdir $C/instances/web-1
expect_eq "$(cat $C/instances/web-1/ram_mb)" 256 "default ram_mb"
expect_eq "$(cat $C/instances/web-1/cpu_percent)" 100 "default cpu_percent"
expect_eq "$(cat $C/instances/web-1/restart)" never "default restart"
expect_eq "$(cat $C/instances/web-1/namespace)" default "default namespace"
expect_eq "$(cat $C/instances/web-1/state)" created "initial state"
expect_eq "$(ls $C/instances/web-1 | wc -l)" 20 "instance file count"
out=$(mkdir $C/instances/web-1 2>&1) && fail "mkdir of an existing instance succeeded"
[[ "$out" == *"File exists"* ]] || fail "mkdir existing: $out"
write_fails $C/instances/x/ram_mb 5 "No such file or directory"
out=$(mkdir "$C/instances/bad name" 2>&1) && fail "mkdir with a bad name succeeded"
[[ "$out" == *"Invalid argument"* ]] || fail "bad name: $out"
grep -q 'must match' $C/error || fail "constellation/error explains the bad name"

# Set and read back, through every configuration file.
echo 512 > $C/instances/web-1/ram_mb
expect_eq "$(cat $C/instances/web-1/ram_mb)" 512 "ram_mb read back"
# Writes through one open file are answered asynchronously but applied one at a time, in order,
# each on the value the one before it left: 8 threads share one descriptor, each pwrites its own
# value at offset 0; every write returns and the value read back is one of them.
python3 - "$C/instances/web-1/ram_mb" <<'PY' || fail "concurrent writes through one descriptor"
import os, sys, threading
fd = os.open(sys.argv[1], os.O_WRONLY)
values = [b"%d\n" % (256 + 64 * i) for i in range(8)]  # all 4 bytes long
errors = []
def writer(v):
    for _ in range(25):
        try:
            if os.pwrite(fd, v, 0) != len(v):
                errors.append("short write")
        except OSError as e:
            errors.append(str(e))
threads = [threading.Thread(target=writer, args=(v,)) for v in values]
for t in threads:
    t.start()
for t in threads:
    t.join()
os.close(fd)
if errors:
    sys.exit("errors: %s" % errors[:3])
PY
v=$(cat $C/instances/web-1/ram_mb)
[[ " 256 320 384 448 512 576 640 704 " == *" $v "* ]] || fail "ram_mb after concurrent writes: $v"
echo 512 > $C/instances/web-1/ram_mb
echo 50 > $C/instances/web-1/cpu_percent
echo 1024 > $C/instances/web-1/disk_mb
echo on-failure > $C/instances/web-1/restart
echo "sleep 1000" > $C/instances/web-1/cmd
printf 'PORT=8080\nMODE=prod\n' > $C/instances/web-1/env
echo node-a > $C/instances/web-1/node
printf 'strategy=spread\nconstraint=zone=a\n' > $C/instances/web-1/placement
echo team-a > $C/instances/web-1/namespace
echo db-password > $C/instances/web-1/secrets
expect_eq "$(cat $C/instances/web-1/env)" "$(printf 'PORT=8080\nMODE=prod')" "env read back"
expect_eq "$(cat $C/instances/web-1/cmd)" "sleep 1000" "cmd read back"
expect_eq "$(cat $C/instances/web-1/placement | wc -l)" 2 "placement lines"

# Bad values: the errno reaches the shell, the reason is in error, nothing changes.
out=$(bash -c "echo abc > $C/instances/web-1/ram_mb" 2>&1) && fail "echo abc > ram_mb succeeded"
[[ "$out" == *"write error: Invalid argument"* ]] || fail "bash shows the errno: $out"
write_fails $C/instances/web-1/ram_mb abc "Invalid argument"
expect_eq "$(cat $C/instances/web-1/error)" 'ram_mb: "abc" is not an integer (expected 0 or 4..4194304 MiB)' "error file"
expect_eq "$(cat $C/instances/web-1/ram_mb)" 512 "ram_mb unchanged after a bad write"
write_fails $C/instances/web-1/ram_mb 2 "Invalid argument"
write_fails $C/instances/web-1/cpu_percent 100001 "Invalid argument"
write_fails $C/instances/web-1/restart sometimes "Invalid argument"
write_fails $C/instances/web-1/env "NOT A VAR" "Invalid argument"
write_fails $C/instances/web-1/ctl explode "Invalid argument"
grep -q 'unknown verb' $C/instances/web-1/error || fail "ctl error names the verb"
write_fails $C/instances/web-1/ctl "kill NOSIG" "Invalid argument"
write_fails $C/instances/web-1/state running "Permission denied"
write_fails $C/status x "Permission denied"
write_fails $C/instances/web-1/bogus 1 "No such file or directory"
# Shells write a multi-line value a line at a time; the open file's whole content is the value.
bash -c "printf 'X=1\nY=2\n' > $C/instances/web-1/secrets" 2>/dev/null && fail "secrets X=1 accepted"
bash -c "printf 'db\ncache\n' > $C/instances/web-1/secrets"
expect_eq "$(cat $C/instances/web-1/secrets)" "$(printf 'db\ncache')" "secrets written line by line"
echo db-password > $C/instances/web-1/secrets
head -c 70000 /dev/zero | tr '\0' x > $T/big
out=$(sh -c "cat $T/big > $C/instances/web-1/cmd" 2>&1) && fail "a 70000-byte value was accepted"
[[ "$out" == *"too large"* ]] || fail "oversized value: $out"
expect_eq "$(cat $C/instances/web-1/cmd)" "sleep 1000" "cmd unchanged after refused writes"
rm $C/instances/web-1/ram_mb 2>/dev/null && fail "unlink of a control file succeeded"
mv $C/instances/web-1 $C/instances/web-2 2>/dev/null && fail "rename of an instance succeeded"

# A good write clears the error.
echo 768 > $C/instances/web-1/ram_mb
expect_eq "$(cat $C/instances/web-1/error)" "" "error cleared by a good write"

# spec: many fields at once, atomically.
printf 'ram_mb=2048\ncpu_percent=200\nenv=A=1\nenv=B=2\n' > $C/instances/web-1/spec
expect_eq "$(cat $C/instances/web-1/ram_mb)" 2048 "spec ram_mb"
expect_eq "$(cat $C/instances/web-1/cpu_percent)" 200 "spec cpu_percent"
expect_eq "$(cat $C/instances/web-1/env)" "$(printf 'A=1\nB=2')" "spec env"
expect_eq "$(cat $C/instances/web-1/cmd)" "sleep 1000" "spec kept cmd"
write_fails $C/instances/web-1/spec "$(printf 'ram_mb=64\ncpu_percent=lots')" "Invalid argument"
expect_eq "$(cat $C/instances/web-1/ram_mb)" 2048 "a refused spec changes nothing"
grep -q '^ram_mb=2048$' $C/instances/web-1/spec || fail "spec reads back"

# ctl runs the process and records the desired state (tests/integration/instances*.sh go further).
echo start > $C/instances/web-1/ctl
grep -q '^desired=running$' $C/instances/web-1/spec || fail "start recorded"
expect_eq "$(cat $C/instances/web-1/state)" running "state after start"
[[ "$(cat $C/instances/web-1/pid)" =~ ^[0-9]+$ ]] || fail "pid while running"
echo "kill TERM" > $C/instances/web-1/ctl  # sleep as its namespace's PID 1 ignores it
expect_eq "$(cat $C/instances/web-1/state)" running "state after an ignored SIGTERM"
echo stop > $C/instances/web-1/ctl
grep -q '^desired=stopped$' $C/instances/web-1/spec || fail "stop recorded"
expect_eq "$(cat $C/instances/web-1/state)" stopped "state after stop"

# Node labels.
printf 'zone=a\nrack=r1\n' > $C/nodes/node-a/labels
expect_eq "$(cat $C/nodes/node-a/labels)" "$(printf 'zone=a\nrack=r1')" "labels"
write_fails $C/nodes/node-a/labels "no-equals" "Invalid argument"
grep -q 'not key=value' $C/nodes/node-a/error || fail "node error file"
write_fails $C/nodes/node-a/addr 1.2.3.4:5 "Permission denied"

# Cluster ctl.
echo compact > $C/ctl
echo "log-level debug" > $C/ctl
write_fails $C/ctl "log-level loud" "Invalid argument"
write_fails $C/ctl "frobnicate" "Invalid argument"
grep -q 'unknown verb' $C/error || fail "constellation/error explains the verb"

# Every write is audited, refusals too.
grep -q " instances/web-1/ram_mb write ok 512$" $C/audit || fail "audit has the accepted write"
grep -q " instances/web-1/ram_mb write InvalidArgument abc$" $C/audit || fail "audit has the refusal"
grep -q " instances/web-1 mkdir ok -$" $C/audit || fail "audit has mkdir"
grep -q " instances/web-1/state write PermissionDenied running$" $C/audit || fail "audit has the read-only refusal"

# rmdir removes.
mkdir $C/instances/tmp-1
rmdir $C/instances/tmp-1
[[ ! -e $C/instances/tmp-1 ]] || fail "rmdir left the instance"
expect_eq "$(ls $C/instances)" web-1 "instances listing after rmdir"
rmdir $C/instances/tmp-1 2>/dev/null && fail "rmdir of a missing instance succeeded"
rmdir $C/nodes/node-a 2>/dev/null && fail "rmdir of a node succeeded"
# A re-created instance starts from the defaults.
mkdir $C/instances/tmp-1
expect_eq "$(cat $C/instances/tmp-1/ram_mb)" 256 "re-created instance has defaults"

stop_daemon
echo PASS
