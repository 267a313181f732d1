#!/usr/bin/env python3
"""Three daemons on loopback form a cluster: a write on node 1 is read on node 3, a write on a
follower is forwarded to the leader and visible on the follower when write(2) returns, every node
shows the same leader and voters; joins without the token, with a wrong key, with a wrong server
key and garbage bytes are refused and counted, and the cluster is unaffected."""
import os
import random
import socket
import subprocess
import tempfile

from cluster_lib import DAEMON, Cluster, eventually, fail, mkdir, read, write

c = Cluster(3, extra=["--write-timeout-ms", "5000"], name="basic")
lead = c.wait_leader([1, 2, 3])
# Voters are automatic: the two that joined become voters once caught up.
for k in (1, 2, 3):
    eventually(lambda: c.status(k)["voters"] == "n1,n2,n3" and c.status(k)["learners"] == "-",
               f"node {k} shows voters n1,n2,n3 and no learners", 20, c)

# Write on node 1, read on node 3 (a linearizable read: no waiting needed).
if mkdir(c.c(1, "instances", "web")) != 0:
    fail("mkdir on node 1", c)
if write(c.c(1, "instances", "web", "ram_mb"), "512") != 0:
    fail("write on node 1", c)
if read(c.c(3, "instances", "web", "ram_mb")) != "512\n":
    fail(f"node 3 reads {read(c.c(3, 'instances', 'web', 'ram_mb'))!r}, expected 512", c)

# A write on a follower returns once that follower has applied it.
follower = next(k for k in (1, 2, 3) if k != lead)
for v in ("600", "700", "800"):
    if write(c.c(follower, "instances", "web", "ram_mb"), v) != 0:
        fail(f"write on follower {follower}", c)
    got = read(c.c(follower, "instances", "web", "ram_mb"))
    if got != v + "\n":
        fail(f"follower {follower} reads {got!r} right after writing {v}", c)
    for k in (1, 2, 3):
        if read(c.c(k, "instances", "web", "ram_mb")) != v + "\n":
            fail(f"node {k} does not read {v}", c)
# Bad input on a follower: refused with EINVAL everywhere alike, reason in the error file.
if write(c.c(follower, "instances", "web", "ram_mb"), "abc") != 22:
    fail("a bad value on a follower was not refused with EINVAL", c)
if "not an integer" not in read(c.c(follower, "instances", "web", "error")):
    fail("no reason in the follower's error file", c)
audit = read(c.c(2, "audit"))
if f" n{follower} instances/web/ram_mb write ok 800" not in audit:
    fail("the follower's write is not in node 2's audit", c)
for k in (1, 3):
    if read(c.c(k, "audit")) != audit:
        fail(f"node {k}'s audit differs from node 2's", c)

# ---- Refused joins.
addr1 = c.addr(1)
before = c.status(1)


def try_join(token, extra=()):
    d = tempfile.mkdtemp(prefix="cn-intruder.", dir=c.dir)
    r = subprocess.run([DAEMON, "--data", f"{d}/data", "--mount", f"{d}/mnt", "--name", "intruder",
                        "--bind", "127.0.0.1:0", "--log", f"{d}/log", "--join", addr1,
                        "--join-timeout-s", "3", *(["--token", token] if token else []), *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return r


# 1. No token at all: refused before anything is sent.
r = try_join(None)
if r.returncode != 2 or "--token" not in r.stderr:
    fail(f"--join without --token: exit {r.returncode}, {r.stderr!r}", c)
# 2. A token with node 1's key but a wrong join secret: a key node 1 never admitted.
good = read(f"{c.data(1)}/join_token").strip()
wrong_secret = good[:68] + "".join(random.choice("0123456789abcdef") for _ in range(64))
r = try_join(wrong_secret)
if r.returncode == 0 or "no answer to the join request" not in r.stderr:
    fail(f"a join with a wrong key was not refused: {r.returncode} {r.stderr!r}", c)
eventually(lambda: int(c.status(1)["peers_refused"]) > int(before["peers_refused"]),
           "node 1 counts the refused key", 10, c)
# 3. A token naming another server key: the handshake fails.
wrong_server = "cn1." + "".join(random.choice("0123456789abcdef") for _ in range(64)) + good[68:]
r = try_join(wrong_server)
if r.returncode == 0:
    fail("a join with a wrong server key succeeded", c)
hs_before = int(before["handshakes_failed"])
eventually(lambda: int(c.status(1)["handshakes_failed"]) > hs_before,
           "node 1 counts the failed handshake", 10, c)
# 4. Garbage bytes on node 1's port.
hs_before = int(c.status(1)["handshakes_failed"])
host, port = addr1.rsplit(":", 1)
with socket.create_connection((host, int(port))) as s:
    s.sendall(b"\xff" + os.urandom(4095))
    eventually(lambda: int(c.status(1)["handshakes_failed"]) > hs_before,
               "node 1 counts the garbage", 10, c)
# 5. A malformed token is refused by the daemon itself.
r = try_join("cn1.nothex")
if r.returncode == 0 or "join token" not in r.stderr:
    fail(f"a malformed token: {r.returncode} {r.stderr!r}", c)

# The cluster is unaffected: same members, writes still work everywhere.
for k in (1, 2, 3):
    if sorted(os.listdir(c.c(k, "nodes"))) != ["n1", "n2", "n3"]:
        fail(f"node {k} lists nodes {os.listdir(c.c(k, 'nodes'))}", c)
    if c.status(k)["voters"] != "n1,n2,n3":
        fail(f"node {k}'s voters changed", c)
if write(c.c(2, "instances", "web", "ram_mb"), "900") != 0:
    fail("write on node 2 after the refused joins", c)
for k in (1, 2, 3):
    if read(c.c(k, "instances", "web", "ram_mb")) != "900\n":
        fail(f"node {k} after the refused joins", c)
c.down_and_check()
print("ok")
