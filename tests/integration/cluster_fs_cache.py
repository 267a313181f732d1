#!/usr/bin/env python3
"""cluster/ on three nodes whose kernels may cache entries and attributes for 10 minutes
(--cache-timeout-ms 600000): a change made on node 1 reaches node 2's kernel anyway, because
applying another node's file-system op invalidates the attributes and entries it changed. Without
the invalidation, node 2 would show the old mode, the old name and the removed file for 10 min.
Also: a flock held on one node blocks a waiter on another until released."""
import errno
import fcntl
import os
import stat
import subprocess
import sys

from cluster_lib import Cluster, eventually, fail

c = Cluster(3, extra=["--cache-timeout-ms", "600000"], name="fscache")
c.wait_leader([1, 2, 3])
c.wait_caught_up([1, 2, 3])


def f(k, *parts):
    return os.path.join(c.mnt(k), "cluster", *parts)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def gone(path):
    try:
        os.stat(path)
        return False
    except OSError as e:
        return e.errno == errno.ENOENT


os.mkdir(f(1, "d"))
with open(f(1, "d", "x"), "w"):
    pass
os.chmod(f(1, "d", "x"), 0o644)
# Node 2 sees the file, and its kernel now caches the entry and the attributes.
eventually(lambda: mode(f(2, "d", "x")) == 0o644, "node 2 sees d/x with mode 644", 20, c)

# An attribute change on node 1: node 2's cached attributes are invalidated.
os.chmod(f(1, "d", "x"), 0o600)
eventually(lambda: mode(f(2, "d", "x")) == 0o600, "node 2 sees the new mode 600", 20, c)

# A rename on node 1: node 2's cached entry for the old name goes, the new name appears.
os.rename(f(1, "d", "x"), f(1, "d", "y"))
eventually(lambda: gone(f(2, "d", "x")) and mode(f(2, "d", "y")) == 0o600,
           "node 2 sees d/x renamed to d/y", 20, c)

# A removal on node 1.
os.unlink(f(1, "d", "y"))
eventually(lambda: gone(f(2, "d", "y")), "node 2 sees d/y removed", 20, c)
if os.listdir(f(2, "d")) != []:
    fail(f"node 2 lists {os.listdir(f(2, 'd'))} in d, expected nothing", c)

# The other way round, and a change node 3 never looked at before.
os.mkdir(f(2, "e"))
eventually(lambda: os.path.isdir(f(1, "e")) and os.path.isdir(f(3, "e")),
           "nodes 1 and 3 see e", 20, c)
os.rmdir(f(2, "e"))
eventually(lambda: gone(f(1, "e")) and gone(f(3, "e")), "nodes 1 and 3 see e removed", 20, c)

# Locks are cluster-wide: a flock held on node 1 blocks a waiter on node 2 until node 1 lets go,
# and a waiter that only learns of the release by applying node 1's op is then granted.
with open(f(1, "lockfile"), "w"):
    pass
eventually(lambda: os.path.exists(f(2, "lockfile")), "node 2 sees the lock file", 20, c)
held = os.open(f(1, "lockfile"), os.O_RDWR)
fcntl.flock(held, fcntl.LOCK_EX)
waiter = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\n"
                           "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                           "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                           "print('granted', flush=True)\n", f(2, "lockfile")],
                          stdout=subprocess.PIPE, text=True)
# Blocked in flock(2) (73) on node 2 while node 1 holds the lock.
eventually(lambda: open(f"/proc/{waiter.pid}/syscall").read().split(" ")[0] == "73",
           "the waiter on node 2 blocks in flock", 20, c)
os.close(held)  # the last close of node 1's open file releases its flock
try:
    out, _ = waiter.communicate(timeout=20)
except subprocess.TimeoutExpired:
    fail("the waiter on node 2 was never granted the lock node 1 released", c)
if out.strip() != "granted":
    fail(f"the waiter on node 2 said {out!r}", c)

c.down_and_check()
print("PASS")
