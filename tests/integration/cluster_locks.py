#!/usr/bin/env python3
"""Locks on cluster/: fcntl and flock between processes, non-blocking conflicts (EAGAIN),
blocking waits that end when the holder unlocks, closes or dies or when a signal interrupts them,
more blocked waiters than the daemon has FUSE workers (the mount still answers), and F_GETLK
reporting the holder."""
import fcntl
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

DAEMON = os.environ["CONSTELLATIOND"]
DEADLINE_S = 20


def fail(msg, log=None):
    print("FAIL:", msg, file=sys.stderr)
    if log and os.path.exists(log):
        sys.stderr.write(open(log).read()[-3000:])
    sys.exit(1)


HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
kind = sys.argv[2]
if kind == "posix":
    fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)
else:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()  # hold until told (or killed)
if sys.argv[3] == "close":
    os.close(fd)
print("released", flush=True)
sys.stdin.readline()
"""


def holder(path, kind, how):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, path, kind, how], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "locked":
        fail("holder did not lock")
    return p


def try_lock(path, kind):
    fd = os.open(path, os.O_RDWR)
    try:
        if kind == "posix":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in (11, 13):
            raise
        return False
    finally:
        os.close(fd)


def main():
    tmp = tempfile.mkdtemp(prefix="cn-locks.")
    mount, data, log = f"{tmp}/m", f"{tmp}/data", f"{tmp}/daemon.log"
    subprocess.run([DAEMON, "--data", data, "--mount", mount, "--name", "node-a", "--log", log],
                   check=True)
    path = f"{mount}/cluster/lockfile"
    open(path, "w").write("x" * 200)
    try:
        for kind in ("posix", "flock"):
            # A conflict is refused without blocking; unlocking by close lets others in.
            h = holder(path, kind, "close")
            if try_lock(path, kind):
                fail(f"{kind}: a second exclusive lock was granted")
            if kind == "posix":
                fd = os.open(path, os.O_RDWR)
                got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 10, 0))
                l_type, _, start, length, pid = struct.unpack("hhqqi", got)
                os.close(fd)
                if l_type != fcntl.F_WRLCK or pid != h.pid or start != 0 or length != 100:
                    fail(f"F_GETLK reported {l_type, start, length, pid}, holder is {h.pid}")
                if not try_lock_range(path, 150):
                    fail("a lock on a range nobody holds was refused")
            # A blocking waiter is granted when the holder lets go.
            waiter = subprocess.Popen([sys.executable, "-c", WAITER, path, kind],
                                      stdout=subprocess.PIPE, text=True)
            h.stdin.write("\n")
            h.stdin.flush()
            if h.stdout.readline().strip() != "released":
                fail("holder did not release")
            expect_granted(waiter, kind, log)
            h.kill()
            h.wait()
            # More blocked waiters than the daemon has FUSE workers (64): a wait holds none, so the
            # mount still answers, and the holder's unlock gets through to let them all in.
            h = holder(path, kind, "close")
            many = [subprocess.Popen([sys.executable, "-c", WAITER, path, kind],
                                     stdout=subprocess.PIPE, text=True) for _ in range(80)]
            wait_blocked(many, kind, log)
            listed = []
            lister = threading.Thread(target=lambda: listed.append(os.listdir(f"{mount}/cluster")),
                                      daemon=True)
            lister.start()
            lister.join(DEADLINE_S)
            if not listed:
                fail(f"{kind}: the mount hung with 80 lock waiters", log)
            h.stdin.write("\n")
            h.stdin.flush()
            for w in many:
                expect_granted(w, kind, log)
            h.kill()
            h.wait()
            # A signal interrupts a blocked wait (EINTR, the handler runs) without granting it.
            h = holder(path, kind, "keep")
            w = subprocess.Popen([sys.executable, "-c", INTERRUPTED, path, kind],
                                 stdout=subprocess.PIPE, text=True)
            wait_blocked([w], kind, log)
            w.send_signal(signal.SIGUSR1)
            expect_said(w, "interrupted", f"{kind}: a signal did not end a blocked wait", log)
            if try_lock(path, kind):
                fail(f"{kind}: the holder's lock went away with the interrupted wait")
            h.kill()
            h.wait()
            # A holder that dies releases its lock.
            h = holder(path, kind, "keep")
            h.kill()
            h.wait()
            end = time.monotonic() + DEADLINE_S
            while not try_lock(path, kind):
                if time.monotonic() > end:
                    fail(f"{kind}: the lock of a killed holder was never released", log)
                time.sleep(0.05)
    finally:
        pid = int(open(f"{data}/constellationd.pid").read())
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + DEADLINE_S
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
            time.sleep(0.05)
        subprocess.run(["umount", "-l", mount], stderr=subprocess.DEVNULL)
    text = open(log).read()
    if "stopped cleanly" not in text or "Sanitizer" in text:
        fail("daemon did not stop cleanly", log)
    subprocess.run(["rm", "-rf", tmp])
    print("PASS")


WAITER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[2] == "posix":
    fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)
else:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("granted", flush=True)
"""


INTERRUPTED = r"""
import fcntl, os, signal, sys
class Interrupted(Exception):
    pass
def on_signal(*_):
    raise Interrupted()
signal.signal(signal.SIGUSR1, on_signal)
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    if sys.argv[2] == "posix":
        fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX)
    print("granted", flush=True)
except Interrupted:
    print("interrupted", flush=True)
"""

# The lock calls: fcntl(2) (lockf) and flock(2), by their x86-64 numbers in /proc/PID/syscall.
LOCK_SYSCALL = {"posix": "72", "flock": "73"}


def expect_said(waiter, want, why_not, log):
    """`waiter` ends within DEADLINE_S having printed `want`; else fails with `why_not`."""
    try:
        out, _ = waiter.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        fail(why_not, log)
    if out.strip() != want:
        fail(f"{why_not}: the waiter said {out!r}")


def expect_granted(waiter, kind, log):
    expect_said(waiter, "granted", f"{kind}: a blocked waiter was never granted the lock", log)


def wait_blocked(procs, kind, log):
    """Returns once every process sleeps in its lock call."""
    end = time.monotonic() + DEADLINE_S
    for p in procs:
        while True:
            try:
                with open(f"/proc/{p.pid}/syscall") as f:
                    if f.read().split(" ", 1)[0] == LOCK_SYSCALL[kind]:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                fail(f"{kind}: a waiter never blocked in its lock call", log)
            time.sleep(0.01)


def try_lock_range(path, start):
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, start)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
