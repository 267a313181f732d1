#!/usr/bin/env python3
"""SWIM membership between real daemons (4 nodes on loopback: voters n1-n3, learner n4).

- Every node shows every node `alive` in nodes/<n>/status and `nodes_alive 4` in status.
- n4 paused (SIGSTOP) past the suspicion timeout: the others show it suspect, then dead (in that
  order in constellation/events); resumed (SIGCONT): alive again everywhere.
- n3, a voter, killed with SIGKILL: dead on every other node, and the leader's voter planner
  replaces it with the learner n4 (voters n1,n2,n4); writes keep working.
- n2 stopped cleanly (SIGTERM): `left` on the others (it announced its leave).
"""
import os
import select
import time

from cluster_lib import Cluster, eventually, fail, mkdir, read, write


class Events:
    """A reader of one node's constellation/events, from the moment it is opened."""

    def __init__(self, path, cluster):
        self.fd = os.open(path, os.O_RDONLY)
        self.cluster = cluster
        self.lines = []
        self.buf = b""

    def wait(self, pattern, timeout, after=-1):
        """Until a line after index `after` contains `pattern` (returns its index), or fails."""
        deadline = time.monotonic() + timeout
        seen = after + 1
        while True:
            for i in range(seen, len(self.lines)):
                if pattern in self.lines[i]:
                    return i
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"no event matching {pattern!r} within {timeout} s; saw {self.lines}",
                     self.cluster)
            p = select.poll()
            p.register(self.fd, select.POLLIN)
            if p.poll(min(left, 0.5) * 1000):
                self.buf += os.read(self.fd, 65536)
                *done, self.buf = self.buf.split(b"\n")
                self.lines += [l.decode() for l in done]


def state(c, k, node):
    return read(c.c(k, "nodes", node, "status")).strip()


def all_see(c, among, node, want):
    return all(state(c, k, node) == want for k in among)


c = Cluster(4, extra=["--write-timeout-ms", "5000"], name="membership")
c.wait_leader([1, 2, 3, 4])
eventually(lambda: c.status(1)["voters"] == "n1,n2,n3" and c.status(1)["learners"] == "n4",
           "voters n1,n2,n3 and learner n4", 30, c)
names = ["n1", "n2", "n3", "n4"]
for k in (1, 2, 3, 4):
    eventually(lambda: all(state(c, k, n) == "alive" for n in names)
               and c.status(k)["nodes_alive"] == "4", f"node {k} sees all four alive", 20, c)

# ---- Pause n4 past the suspicion timeout: suspect, then dead; resume: alive again.
ev = Events(c.c(1, "events"), c)
c.tool("pause", "4")
i_suspect = ev.wait("node_suspect n4", 20)
i_dead = ev.wait("node_dead n4", 20)
if i_dead < i_suspect:
    fail(f"n4 was dead before it was suspect: {ev.lines}", c)
eventually(lambda: all_see(c, (1, 2, 3), "n4", "dead"), "n1-n3 show n4 dead", 20, c)
if c.status(1)["nodes_alive"] != "3":
    fail(f"node 1 shows nodes_alive {c.status(1)['nodes_alive']} with n4 dead", c)
c.tool("resume", "4")
ev.wait("node_alive n4", 20, after=i_dead)
eventually(lambda: all_see(c, (1, 2, 3), "n4", "alive"), "n1-n3 show n4 alive again", 20, c)
eventually(lambda: all(state(c, 4, n) == "alive" for n in names), "n4 sees everyone alive", 20, c)

# ---- Kill a voter: dead everywhere, replaced by the learner.
c.tool("kill", "3")
ev.wait("node_dead n3", 20)
eventually(lambda: all_see(c, (1, 2, 4), "n3", "dead"), "n1, n2, n4 show n3 dead", 20, c)
eventually(lambda: c.status(1)["voters"] == "n1,n2,n4", "n4 replaces n3 as a voter", 30, c)
e = mkdir(c.c(1, "instances", "after")) or write(c.c(1, "instances", "after", "ram_mb"), "300")
if e != 0:
    fail(f"a write fails after the voter was replaced: {os.strerror(e)}", c)

# ---- A clean stop announces the leave.
c.tool("stop", "2")
ev.wait("node_left n2", 20)
eventually(lambda: all_see(c, (1, 4), "n2", "left"), "n1 and n4 show n2 left", 20, c)
eventually(lambda: read(c.c(4, "instances", "after", "ram_mb")) == "300\n", "n4 reads the write",
           20, c)

c.tool("down")
for k in (1, 2, 3, 4):
    text = open(c.log(k), errors="replace").read()
    if "Sanitizer" in text:
        fail(f"sanitizer report in node {k}'s log", c)
    if k != 3 and not text.rstrip().endswith("stopped cleanly"):
        fail(f"node {k} did not stop cleanly", c)
print("ok")
