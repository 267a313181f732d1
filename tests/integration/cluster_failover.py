#!/usr/bin/env python3
"""kill -9 the leader of a three-node cluster under a write load: a new leader is elected, writes
resume, and no acknowledged write is lost (every mkdir that returned success is on every node).
The killed node restarts and catches up. Then a node kept down while the others write and compact
their logs catches up from a snapshot."""
import os
import threading
import time

from cluster_lib import Cluster, eventually, fail, mkdir, read, write

c = Cluster(3, extra=["--write-timeout-ms", "4000"], name="failover")
lead = c.wait_leader([1, 2, 3])
for k in (1, 2, 3):
    eventually(lambda: c.status(k)["voters"] == "n1,n2,n3", f"node {k}: three voters", 20, c)


class Writer(threading.Thread):
    """mkdir instances/w<node>-<t>-<seq> in a loop on one node; records what was acknowledged."""

    def __init__(self, k, t):
        super().__init__(daemon=True)
        self.k, self.t = k, t
        self.acked = []  # (name, time acknowledged)
        self.errors = {}
        self.stop = False

    def run(self):
        seq = 0
        while not self.stop:
            name = f"w{self.k}-{self.t}-{seq}"
            seq += 1
            rc = mkdir(c.c(self.k, "instances", name))
            if rc == 0:
                self.acked.append((name, time.monotonic()))
            else:
                self.errors[rc] = self.errors.get(rc, 0) + 1
                if rc not in (11,):  # EAGAIN: no quorum / leader change (retry)
                    return  # the node is gone (ENOTCONN...)


writers = [Writer(k, t) for k in (1, 2, 3) for t in range(2)]
for w in writers:
    w.start()
eventually(lambda: sum(len(w.acked) for w in writers) >= 60, "60 acknowledged writes", 30, c)
c.tool("kill", str(lead))
killed_at = time.monotonic()
survivors = [k for k in (1, 2, 3) if k != lead]
new = c.wait_leader(survivors, 15)
if new == lead:
    fail("the killed node is still the leader", c)
# Writes resume on the survivors.
eventually(lambda: sum(1 for w in writers for _, t in w.acked if t > killed_at + 0.5) >= 30,
           "30 writes acknowledged after the failover", 30, c)
for w in writers:
    w.stop = True
for w in writers:
    w.join(30)
    if w.is_alive():
        fail(f"writer on node {w.k} hangs", c)
acked = {name for w in writers for name, _ in w.acked}
print(f"leader n{lead} killed; n{new} leads; {len(acked)} writes acknowledged; errors " +
      str({w.k: w.errors for w in writers if w.errors}))

# Restart the killed node: it catches up, and every acknowledged write is on every node.
c.tool("restart", str(lead))
c.wait_caught_up([1, 2, 3])
for k in (1, 2, 3):
    have = set(os.listdir(c.c(k, "instances")))
    missing = acked - have
    if missing:
        fail(f"node {k} lacks {len(missing)} acknowledged writes, e.g. {sorted(missing)[:5]}", c)
audit = read(c.c(new, "audit"))
for k in (1, 2, 3):
    if read(c.c(k, "audit")) != audit:
        fail(f"node {k}'s audit differs from the leader's (a different order?)", c)

# A node far behind catches up from a snapshot: stop one, write, compact everyone's log. The
# leader keeps at most 256 appends in flight to a silent follower (what the transport delivers
# when it comes back), so 600 one-entry appends leave it far behind the compacted log.
lead = c.wait_leader([1, 2, 3])
behind = next(k for k in (1, 2, 3) if k != lead)
up = [k for k in (1, 2, 3) if k != behind]
c.tool("kill", str(behind))
for i in range(600):
    if mkdir(c.c(lead, "instances", f"late-{i}")) != 0:
        fail(f"mkdir late-{i} on the leader", c)
for k in up:
    if write(c.c(k, "ctl"), "compact") != 0:
        fail(f"compact on node {k}", c)
eventually(lambda: all(int(c.status(k)["applied_index"]) > 0 for k in up), "status", 5, c)
c.tool("restart", str(behind))
c.wait_caught_up([1, 2, 3])
if "installed snapshot" not in read(c.log(behind)):
    fail(f"node {behind} caught up without a snapshot", c)
for k in (1, 2, 3):
    have = set(os.listdir(c.c(k, "instances")))
    if not {f"late-{i}" for i in range(600)} <= have or not acked <= have:
        fail(f"node {k} lacks writes after the snapshot", c)
if read(c.c(behind, "audit")) != read(c.c(lead, "audit")):
    fail("the audit installed from the snapshot differs from the leader's", c)
c.down_and_check()
print("ok")
