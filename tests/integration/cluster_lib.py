"""Shared helpers for the multi-node integration tests: a cluster of real daemons on this machine,
run by tools/cluster in a temporary directory, and bounded waits (no sleeps as synchronization).
"""
import atexit
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "cluster")
DAEMON = os.environ["CONSTELLATIOND"]


def fail(msg, cluster=None):
    print("FAIL:", msg, file=sys.stderr)
    if cluster is not None:
        cluster.dump_logs()
    sys.exit(1)


def eventually(pred, what, timeout=20.0, cluster=None):
    """Polls pred() until it returns a true value (returned), or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except OSError:
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout} s waiting for: {what}", cluster)
        time.sleep(0.05)


def write(path, value):
    """One write(2) of value + newline; returns 0 or the errno."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as e:
        return e.errno
    try:
        os.write(fd, (value + "\n").encode())
        return 0
    except OSError as e:
        return e.errno
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def mkdir(path):
    try:
        os.mkdir(path)
        return 0
    except OSError as e:
        return e.errno


def read(path):
    with open(path) as f:
        return f.read()


class Cluster:
    def __init__(self, n, netns=False, extra=(), name="cluster"):
        self.dir = tempfile.mkdtemp(prefix=f"cn-{name}.", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.env = dict(os.environ, CONSTELLATIOND=DAEMON)
        atexit.register(self.cleanup)
        args = ["up", str(n)] + (["--netns"] if netns else [])
        if extra:
            args += ["--"] + list(extra)
        self.tool(*args)
        self.n = n

    def tool(self, *args, check=True):
        r = subprocess.run([TOOL, "--dir", self.dir, *args], env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if check and r.returncode != 0:
            fail(f"tools/cluster {' '.join(args)}: {r.stderr.strip()}", self)
        return r

    def mnt(self, k):
        return f"{self.dir}/n{k}/mnt"

    def c(self, k, *parts):
        return os.path.join(self.mnt(k), "constellation", *parts)

    def log(self, k):
        return f"{self.dir}/n{k}/log"

    def data(self, k):
        return f"{self.dir}/n{k}/data"

    def status(self, k):
        return dict(l.split(" ", 1) for l in read(self.c(k, "status")).splitlines() if " " in l)

    def addr(self, k):
        return self.status(k)["addr"]

    def leader(self, among):
        """The node number all of `among` agree leads (and that leads itself), else None."""
        names = set()
        for k in among:
            try:
                names.add(self.status(k)["leader"])
            except OSError:
                return None
        if len(names) != 1:
            return None
        name = names.pop()
        if not name.startswith("n") or not name[1:].isdigit():
            return None
        k = int(name[1:])
        return k if k in among else None

    def wait_leader(self, among, timeout=20.0):
        return eventually(lambda: self.leader(among), f"one leader among nodes {among}",
                          timeout, self)

    def wait_caught_up(self, among, timeout=30.0):
        """Until every node in `among` has applied the same index."""
        def same():
            idx = {self.status(k)["applied_index"] for k in among}
            return len(idx) == 1
        eventually(same, f"nodes {among} applied the same log", timeout, self)

    def dump_logs(self):
        for k in range(1, getattr(self, "n", 0) + 8):
            p = self.log(k)
            if os.path.exists(p):
                print(f"--- {p} (last 25 lines) ---", file=sys.stderr)
                with open(p, errors="replace") as f:
                    sys.stderr.write("".join(f.readlines()[-25:]))

    def check_logs_clean(self):
        for k in range(1, self.n + 8):
            p = self.log(k)
            if os.path.exists(p) and "Sanitizer" in open(p, errors="replace").read():
                fail(f"sanitizer report in {p}", self)

    def down_and_check(self):
        """Stops every node (SIGTERM) and checks each stopped cleanly, without sanitizer reports."""
        self.tool("down")
        for k in range(1, self.n + 8):
            p = self.log(k)
            if not os.path.exists(p):
                continue
            text = open(p, errors="replace").read()
            if "Sanitizer" in text:
                fail(f"sanitizer report in {p}", self)
            if not text.rstrip().endswith("stopped cleanly"):
                fail(f"node {k} did not stop cleanly", self)

    def cleanup(self):
        if os.path.exists(os.path.join(self.dir, "cluster.json")):
            self.tool("down", check=False)
        if os.environ.get("CN_KEEP"):
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


EAGAIN = errno.EAGAIN
