#!/usr/bin/env python3
"""An instance runs on the node it was made on, whichever node's mount changes it: a limit written
on another node reaches its cgroup live, a stop and a start from another node stop and start it
there, and an rmdir on a third node removes it there. The other nodes never run it."""
import os

from cluster_lib import Cluster, eventually, fail, mkdir, read, write


def memory_limit(pid):
    """The memory limit of the cgroup `pid` runs in (cgroup v1 or v2), in bytes."""
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return int(read(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        if controllers == "" and os.path.exists(f"/sys/fs/cgroup{path}/memory.max"):
            v = read(f"/sys/fs/cgroup{path}/memory.max").strip()
            return -1 if v == "max" else int(v)
    fail(f"no memory cgroup for pid {pid}")


c = Cluster(3, extra=["--write-timeout-ms", "5000"], name="instances")
lead = c.wait_leader([1, 2, 3])
for k in (1, 2, 3):
    eventually(lambda: c.status(k)["voters"] == "n1,n2,n3", f"node {k} shows voters n1,n2,n3", 20,
               c)
home = next(k for k in (1, 2, 3) if k != lead)  # a follower: its changes go through the leader
other = next(k for k in (1, 2, 3) if k not in (lead, home))

if mkdir(c.c(home, "instances", "svc")) != 0:
    fail(f"mkdir instances/svc on node {home}", c)
for k in (1, 2, 3):
    if read(c.c(k, "instances", "svc", "node")) != f"n{home}\n":
        fail(f"node {k} places svc on {read(c.c(k, 'instances', 'svc', 'node'))!r}", c)
# Configured from the leader's mount while stopped, started from the third node's.
if write(c.c(lead, "instances", "svc", "cmd"), "sleep 1000") != 0:
    fail("write cmd on the leader", c)
if write(c.c(lead, "instances", "svc", "ram_mb"), "192") != 0:
    fail("write ram_mb on the leader", c)
if write(c.c(other, "instances", "svc", "ctl"), "start") != 0:
    fail(f"ctl start on node {other}", c)
eventually(lambda: read(c.c(home, "instances", "svc", "state")) == "running\n",
           f"svc running on node {home}", 20, c)
pid = int(read(c.c(home, "instances", "svc", "pid")))
if not os.path.exists(f"/proc/{pid}"):
    fail(f"pid {pid} of svc does not exist", c)
if memory_limit(pid) != 192 << 20:
    fail(f"svc started with memory limit {memory_limit(pid)}, expected {192 << 20}", c)
for k in (lead, other):
    if os.path.exists(os.path.join(c.data(k), "instances", "svc")):
        fail(f"node {k}, which svc is not placed on, has files of it", c)

# A live change from another node: the same process, the new limit.
if write(c.c(other, "instances", "svc", "ram_mb"), "320") != 0:
    fail(f"write ram_mb on node {other}", c)
eventually(lambda: memory_limit(pid) == 320 << 20, "the new memory limit in svc's cgroup", 20, c)
if int(read(c.c(home, "instances", "svc", "pid"))) != pid:
    fail("a limit change restarted svc", c)

# Stopped, changed and started again from the leader's mount: the new run has the new limit.
if write(c.c(lead, "instances", "svc", "ctl"), "stop") != 0:
    fail("ctl stop on the leader", c)
eventually(lambda: read(c.c(home, "instances", "svc", "state")) == "stopped\n",
           f"svc stopped on node {home}", 20, c)
eventually(lambda: not os.path.exists(f"/proc/{pid}"), f"pid {pid} gone", 20, c)
if write(c.c(lead, "instances", "svc", "ram_mb"), "96") != 0:
    fail("write ram_mb on the leader while stopped", c)
if write(c.c(lead, "instances", "svc", "ctl"), "start") != 0:
    fail("ctl start on the leader", c)
eventually(lambda: read(c.c(home, "instances", "svc", "state")) == "running\n",
           f"svc running again on node {home}", 20, c)
pid2 = int(read(c.c(home, "instances", "svc", "pid")))
if pid2 == pid or memory_limit(pid2) != 96 << 20:
    fail(f"the new run (pid {pid2}) has memory limit {memory_limit(pid2)}, expected {96 << 20}", c)

# Removed from the third node: stopped and deleted where it ran.
os.rmdir(c.c(other, "instances", "svc"))
eventually(lambda: not os.path.exists(f"/proc/{pid2}"), f"pid {pid2} gone after rmdir", 20, c)
eventually(lambda: not os.path.exists(os.path.join(c.data(home), "instances", "svc")),
           f"svc's files gone from node {home}", 20, c)
for k in (1, 2, 3):
    if os.path.exists(c.c(k, "instances", "svc")):
        fail(f"node {k} still lists svc", c)
c.down_and_check()
print("ok")
