#!/usr/bin/env python3
"""`echo join HOST:PORT TOKEN > constellation/ctl`: a fresh node started alone (with --bind,
without --join) joins the cluster of another node at run time, in place — its mount stays, and
reads and writes on it go on during the switch (EAGAIN at worst) — then shares that cluster's
state both ways and stays in it across a restart without --join. The refusals change nothing:
bad syntax, a bad address, a malformed token or the node's own token (EINVAL), a node started
without --bind (EINVAL), a node whose cluster has an instance or a file (EBUSY), a token nobody
answers (ETIMEDOUT after --join-timeout-s), a node already in a cluster of two (EBUSY). The token
never reaches the audit. A node stopped while its join waits stops promptly and cleanly."""
import errno
import os
import signal
import subprocess
import tempfile
import threading
import time

from cluster_lib import DAEMON, Cluster, eventually, fail, mkdir, read, write

c = Cluster(1, extra=["--join-timeout-s", "3"], name="ctljoin")
c.tool("add", "--alone")
c.n = 2
token1 = read(os.path.join(c.data(1), "join_token")).strip()
token2 = read(os.path.join(c.data(2), "join_token")).strip()
addr1, addr2 = c.addr(1), c.addr(2)
ctl2 = c.c(2, "ctl")
id1, id2 = c.status(1)["cluster"], c.status(2)["cluster"]
if id1 == id2:
    fail("the two nodes started in the same cluster", c)


def nodes(k):
    return sorted(os.listdir(c.c(k, "nodes")))


def unchanged(what):
    st = c.status(2)
    if st["cluster"] != id2 or st["voters"] != "n2" or st["learners"] != "-" or nodes(2) != ["n2"]:
        fail(f"{what}: node 2 changed: {st}, nodes {nodes(2)}", c)
    if nodes(1) != ["n1"] or c.status(1)["voters"] != "n1":
        fail(f"{what}: node 1 changed: nodes {nodes(1)}", c)


def refused(line, want, reason, ctl=ctl2, k=2):
    e = write(ctl, line)
    if e != want:
        fail(f"{line[:80]!r}: errno {e}, expected {want}", c)
    got = read(c.c(k, "error"))
    if reason not in got:
        fail(f"{line[:80]!r}: error file says {got!r}, expected {reason!r}", c)


# Bad syntax, bad address, malformed or own token: EINVAL.
EINVAL, EBUSY = errno.EINVAL, errno.EBUSY
refused("join", EINVAL, "usage: join HOST:PORT TOKEN")
refused(f"join {addr1}", EINVAL, "usage: join HOST:PORT TOKEN")
refused(f"join {addr1} {token1} more", EINVAL, "usage: join HOST:PORT TOKEN")
refused(f"join 127.0.0.1 {token1}", EINVAL, "is not HOST:PORT")
refused(f"join 127.0.0.1:65536 {token1}", EINVAL, "is not HOST:PORT")
refused(f"join {addr1} cn1.0123", EINVAL, "join token")
refused(f"join {addr1} {token2}", EINVAL, "own token")
unchanged("refused syntax")

# A node whose cluster has state: EBUSY, and the state stays.
if mkdir(c.c(2, "instances", "web")) != 0:
    fail("mkdir instances/web on node 2", c)
refused(f"join {addr1} {token1}", EBUSY, "has state (1 instances")
if os.listdir(c.c(2, "instances")) != ["web"]:
    fail("the instance went after a refused join", c)
os.rmdir(c.c(2, "instances", "web"))
with open(os.path.join(c.mnt(2), "cluster", "f"), "w") as f:
    f.write("data\n")
refused(f"join {addr1} {token1}", EBUSY, "files or directories in cluster/")
if read(os.path.join(c.mnt(2), "cluster", "f")) != "data\n":
    fail("cluster/f changed after a refused join", c)
os.unlink(os.path.join(c.mnt(2), "cluster", "f"))
unchanged("refused with state")

# A well-formed token nobody answers to: ETIMEDOUT after --join-timeout-s, nothing changed.
wrong = "cn1." + os.urandom(64).hex()
refused(f"join {addr1} {wrong}", errno.ETIMEDOUT, "no answer to the join request")
unchanged("unanswered join")

# A node started without --bind cannot join: nobody could reach it.
lone = tempfile.mkdtemp(prefix="cn-ctljoin-lone.", dir="/tmp")
subprocess.run([DAEMON, "--data", f"{lone}/data", "--mount", f"{lone}/mnt", "--name", "lone",
                "--log", f"{lone}/log"], check=True)
try:
    e = write(f"{lone}/mnt/constellation/ctl", f"join {addr1} {token1}")
    err = read(f"{lone}/mnt/constellation/error")
    if e != EINVAL or "without --bind" not in err:
        fail(f"join on a node without --bind: errno {e}, error {err!r}", c)
finally:
    pid = int(read(f"{lone}/data/constellationd.pid").strip())
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: not os.path.exists(f"/proc/{pid}") or
               read(f"/proc/{pid}/stat").split(")")[-1].split()[0] == "Z",
               "the node without --bind stopped", 20, c)
    subprocess.run(["umount", "-l", f"{lone}/mnt"], stderr=subprocess.DEVNULL)
    if "Sanitizer" in read(f"{lone}/log"):
        fail(f"sanitizer report in {lone}/log", c)
    subprocess.run(["rm", "-rf", lone])

# This node's own record is not state that blocks a join; its labels come along.
if write(c.c(2, "nodes", "n2", "labels"), "zone=a") != 0:
    fail("labels on node 2", c)

# The join, with readers and writers on node 2's mount meanwhile: they get answers (EAGAIN at
# worst), never a hang or a crash.
stop = threading.Event()
odd = []


def busy():
    while not stop.is_set():
        try:
            read(c.c(2, "status"))
            os.listdir(os.path.join(c.mnt(2), "cluster"))
        except OSError as e:
            if e.errno != errno.EAGAIN:  # a read waiting for the old cluster's leader
                odd.append(f"read: {e}")
        e = write(ctl2, "log-level info")
        if e not in (0, errno.EAGAIN):
            odd.append(f"log-level: errno {e}")


t = threading.Thread(target=busy)
t.start()
try:
    e = write(ctl2, f"join {addr1} {token1}")
finally:
    stop.set()
    t.join()
if e != 0:
    fail(f"join: errno {e}: {read(c.c(2, 'error'))}", c)
if odd:
    fail(f"requests during the join: {odd[:5]}", c)

# Admitted and caught up when the write returned; added as a learner (its configuration entry
# follows its admission in the log).
if c.status(2)["cluster"] != id1:
    fail(f"node 2 is not in node 1's cluster after the join: {c.status(2)}", c)
for k in (1, 2):
    eventually(lambda: c.status(k)["voters"] == "n1" and c.status(k)["learners"] == "n2",
               f"node {k} shows voters n1, learners n2", 20, c)
for k in (1, 2):
    if nodes(k) != ["n1", "n2"]:
        fail(f"node {k} lists nodes {nodes(k)}", c)
    if read(c.c(k, "nodes", "n2", "addr")) != addr2 + "\n":
        fail(f"node {k}: n2's addr", c)
    if read(c.c(k, "nodes", "n2", "labels")) != "zone=a\n":
        fail(f"node {k}: n2's labels {read(c.c(k, 'nodes', 'n2', 'labels'))!r}", c)
eventually(lambda: read(c.c(1, "nodes", "n2", "status")) == "alive\n" and
           read(c.c(2, "nodes", "n1", "status")) == "alive\n", "SWIM sees both alive", 20, c)

# Writes both ways: control files (linearizable reads) and cluster/ metadata.
if mkdir(c.c(2, "instances", "web")) != 0 or write(c.c(2, "instances", "web", "ram_mb"), "512"):
    fail("writes on node 2 after the join", c)
if read(c.c(1, "instances", "web", "ram_mb")) != "512\n":
    fail("node 1 does not see node 2's write", c)
if write(c.c(1, "instances", "web", "ram_mb"), "768") != 0:
    fail("write on node 1", c)
if read(c.c(2, "instances", "web", "ram_mb")) != "768\n":
    fail("node 2 does not see node 1's write", c)
os.mkdir(os.path.join(c.mnt(2), "cluster", "from2"))
os.mkdir(os.path.join(c.mnt(1), "cluster", "from1"))
for k in (1, 2):
    eventually(lambda: sorted(os.listdir(os.path.join(c.mnt(k), "cluster"))) ==
               ["from1", "from2"], f"node {k} lists cluster/from1 and from2", 10, c)

# The token is a secret: audit keeps the verb and the address only.
for k in (1, 2):
    audit = read(c.c(k, "audit"))
    if token1 in audit or wrong in audit:
        fail(f"a join token is in node {k}'s audit", c)
if f"n2 ctl write ok join {addr1} (token not recorded)" not in read(c.c(1, "audit")):
    fail("the join is not in the joined cluster's audit", c)

# A member of a cluster of two cannot join another: EBUSY, on either node.
refused(f"join {addr1} {token1}", EBUSY, "already in a cluster with other nodes")
refused(f"join {addr2} {token2}", EBUSY, "already in a cluster with other nodes", c.c(1, "ctl"), 1)

# A restart (its command line has no --join) keeps node 2 in the cluster it joined.
c.tool("restart", "2")
if c.status(2)["cluster"] != id1:
    fail("node 2 left the joined cluster on restart", c)
if write(c.c(2, "instances", "web", "ram_mb"), "1024") != 0 or \
        read(c.c(1, "instances", "web", "ram_mb")) != "1024\n":
    fail("a write on node 2 after its restart", c)
# Stopping a node while its join waits for an answer is prompt and clean: the join gives up
# (EAGAIN) instead of holding the stop for its timeout (120 s here; tools/cluster stop kills a
# node still there after 15 s, and a killed node's log does not end in "stopped cleanly").
c.tool("add", "--alone", "--", "--join-timeout-s", "120")
c.n = 3
verdict = []
t = threading.Thread(target=lambda: verdict.append(write(c.c(3, "ctl"), f"join {addr1} {wrong}")))
t.start()
eventually(lambda: "joining the cluster of" in read(c.log(3)), "node 3's join started", 20, c)
c.tool("stop", "3")
t.join()
if verdict != [errno.EAGAIN] or not read(c.log(3)).rstrip().endswith("stopped cleanly"):
    fail(f"a stop during a join: the write got {verdict}, the node did not stop cleanly", c)
c.down_and_check()
print("ok")
