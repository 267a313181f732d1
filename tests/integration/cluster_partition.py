#!/usr/bin/env python3
"""A real network partition (each node in its own network namespace, links cut with
`tools/cluster partition`): the leader cut off from the majority cannot commit — a write on its
mount fails with EAGAIN after the bounded wait and changes nothing — while the majority elects a
new leader and commits; after healing, the old leader follows and catches up."""
import os
import time

from cluster_lib import EAGAIN, Cluster, eventually, fail, mkdir, read, write

# 6 s: long enough for a freshly elected leader's first commit on a loaded machine (the ASan build
# with other tests running), short enough to check that a write without quorum fails, not hangs.
c = Cluster(3, netns=True, extra=["--write-timeout-ms", "6000"], name="partition")
old = c.wait_leader([1, 2, 3])
for k in (1, 2, 3):
    eventually(lambda: c.status(k)["voters"] == "n1,n2,n3", f"node {k}: three voters", 20, c)
if mkdir(c.c(1, "instances", "p")) != 0:
    fail("mkdir", c)
c.wait_caught_up([1, 2, 3])

c.tool("partition", str(old))
majority = [k for k in (1, 2, 3) if k != old]
t0 = time.monotonic()
rc = write(c.c(old, "instances", "p", "ram_mb"), "300")
waited = time.monotonic() - t0
if rc != EAGAIN:
    fail(f"a write on the cut-off leader returned {rc}, expected EAGAIN", c)
if waited > 30:
    fail(f"the refused write took {waited:.1f} s (bound: the 6 s write timeout)", c)
new = c.wait_leader(majority, 15)
if write(c.c(new, "instances", "p", "ram_mb"), "400") != 0:
    fail("the majority cannot commit", c)
for k in majority:
    if read(c.c(k, "instances", "p", "ram_mb")) != "400\n":
        fail(f"majority node {k} does not read 400", c)
# The minority shows no leader once it notices, and commits nothing.
eventually(lambda: c.status(old)["leader"] == "none", "the cut-off node knows no leader", 15, c)
if write(c.c(old, "instances", "p", "ram_mb"), "500") != EAGAIN:
    fail("the cut-off node accepted a write", c)

c.tool("heal")
eventually(lambda: c.leader([1, 2, 3]) == new, f"all follow n{new}", 20, c)
c.wait_caught_up([1, 2, 3])
for k in (1, 2, 3):
    if read(c.c(k, "instances", "p", "ram_mb")) != "400\n":
        fail(f"node {k} reads {read(c.c(k, 'instances', 'p', 'ram_mb'))!r} after healing", c)
audit = read(c.c(new, "audit"))
if " write ok 300" in audit or " write ok 500" in audit:
    fail("a write refused during the partition was applied", c)
for k in (1, 2, 3):
    if read(c.c(k, "audit")) != audit:
        fail(f"node {k}'s audit differs after healing", c)
c.down_and_check()
print("ok")
