#!/usr/bin/env python3
"""kill -9 the daemon while several writers run; after each restart every acknowledged write is
in the audit trail exactly once, no write is applied twice, each writer's writes are applied in
its order, and each instance holds its writer's last acknowledged value (or the one in flight)."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

DAEMON = os.environ["CONSTELLATIOND"]
WRITERS = 6
ROUNDS = 3
ACKS_PER_ROUND = 300
DEADLINE_S = 60


def remove_cgroups(parent):
    """Removes the test daemon's (empty) control groups, deepest first."""
    for root in [f"/sys/fs/cgroup/{h}" for h in os.listdir("/sys/fs/cgroup")] + ["/sys/fs/cgroup"]:
        top = f"{root}/{parent}"
        if not os.path.isdir(top) or os.path.islink(root):
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(d)
            except OSError:
                pass


def fail(msg, log=None):
    print("FAIL:", msg, file=sys.stderr)
    if log and os.path.exists(log):
        sys.stderr.write(open(log).read()[-3000:])
    sys.exit(1)


class Writer(threading.Thread):
    def __init__(self, path, name, start_seq):
        super().__init__(daemon=True)
        self.path, self.name, self.seq = path, name, start_seq
        self.acked = []  # values whose write(2) returned success
        self.in_flight = None

    def run(self):
        while True:
            value = f"{self.name}-{self.seq}"
            self.in_flight = value
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, (value + "\n").encode())
                finally:
                    os.close(fd)
            except OSError:
                return  # the daemon is gone: this write's outcome is unknown
            self.acked.append(value)
            self.in_flight = None
            self.seq += 1


def start(data, mount, log):
    cgroups = "cn-test/" + os.path.basename(os.path.dirname(data))
    subprocess.run([DAEMON, "--data", data, "--mount", mount, "--name", "node-a", "--log", log,
                    "--cgroup-parent", cgroups], check=True)
    return int(open(f"{data}/constellationd.pid").read())


def main():
    tmp = tempfile.mkdtemp(prefix="cn-crash.")
    mount, data, log = f"{tmp}/m", f"{tmp}/data", f"{tmp}/daemon.log"
    c = f"{mount}/constellation"
    pid = start(data, mount, log)
    for k in range(WRITERS):
        os.mkdir(f"{c}/instances/w{k}")
    acked = {f"w{k}": [] for k in range(WRITERS)}
    unknown = {f"w{k}": None for k in range(WRITERS)}
    seq = {f"w{k}": 0 for k in range(WRITERS)}
    try:
        for rnd in range(ROUNDS):
            writers = [Writer(f"{c}/instances/{n}/cmd", n, seq[n]) for n in acked]
            for w in writers:
                w.start()
            end = time.monotonic() + DEADLINE_S
            while sum(len(w.acked) for w in writers) < ACKS_PER_ROUND:
                if time.monotonic() > end:
                    fail("writers made no progress", log)
                if not any(w.is_alive() for w in writers):
                    fail("all writers stopped before the kill", log)
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            for w in writers:
                w.join(DEADLINE_S)
                if w.is_alive():
                    fail(f"writer {w.name} hung after the daemon died", log)
                acked[w.name] += w.acked
                unknown[w.name] = w.in_flight
                seq[w.name] = w.seq + 1
            end = time.monotonic() + DEADLINE_S
            while os.path.exists(f"/proc/{pid}"):
                if time.monotonic() > end:
                    fail("daemon survived SIGKILL")
                time.sleep(0.01)
            pid = start(data, mount, log)
            check(c, acked, unknown, log)
            print(f"round {rnd}: {sum(len(v) for v in acked.values())} acknowledged writes verified")
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + DEADLINE_S
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            subprocess.run(["umount", "-l", mount], stderr=subprocess.DEVNULL)
            remove_cgroups("cn-test/" + os.path.basename(tmp))
    if "Sanitizer" in open(log).read():
        fail("sanitizer report in the daemon log", log)
    subprocess.run(["rm", "-rf", tmp])
    print("PASS")


def check(c, acked, unknown, log):
    audit = open(f"{c}/audit").read()
    applied = {}
    for m in re.finditer(r"^\d+ \d+ \d+ node-a instances/(w\d+)/cmd write ok (\S+)$", audit, re.M):
        applied.setdefault(m.group(1), []).append(m.group(2))
    for name, values in acked.items():
        got = applied.get(name, [])
        if len(got) != len(set(got)):
            fail(f"{name}: a write was applied twice", log)
        missing = [v for v in values if v not in set(got)]
        if missing:
            fail(f"{name}: acknowledged writes lost: {missing[:5]}", log)
        extra = [v for v in got if v not in set(values) and v != unknown[name]]
        # Values in flight at an earlier kill may also be there, each at most once.
        extra = [v for v in extra if not v.startswith(name + "-")]
        if extra:
            fail(f"{name}: unexpected values applied: {extra[:5]}", log)
        order = [int(v.split("-")[1]) for v in got]
        if order != sorted(order):
            fail(f"{name}: writes applied out of order", log)
        current = open(f"{c}/instances/{name}/cmd").read().strip()
        if current not in (values[-1] if values else None, unknown[name]):
            fail(f"{name}: holds {current!r}, expected {values[-1]!r} or {unknown[name]!r}", log)


if __name__ == "__main__":
    main()
