#!/usr/bin/env python3
"""constellation/events end to end: a concurrent reader sees events from the time of open; poll
works; Ctrl-C (SIGINT) ends a blocked `cat`; many blocked readers do not starve the FUSE worker
threads (writes and reads keep working while 100 readers wait)."""
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

DAEMON = os.environ["CONSTELLATIOND"]
DEADLINE_S = 20  # bound for every wait below; a hang is a failure, not a sleep


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


def read_until(fd, needle, log):
    """Reads from a blocking fd until `needle` shows up; bounded by poll timeouts."""
    buf = b""
    end = time.monotonic() + DEADLINE_S
    while needle not in buf:
        left = end - time.monotonic()
        if left <= 0:
            fail(f"did not see {needle!r} in events; got {buf!r}", log)
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                fail("events stream ended", log)
            buf += chunk
    return buf


def main():
    tmp = tempfile.mkdtemp(prefix="cn-events.")
    mount, data, log = f"{tmp}/m", f"{tmp}/data", f"{tmp}/daemon.log"
    c = f"{mount}/constellation"
    cgroups = "cn-test/" + os.path.basename(tmp)
    subprocess.run([DAEMON, "--data", data, "--mount", mount, "--name", "node-a", "--log", log,
                    "--cgroup-parent", cgroups], check=True)
    readers = []
    try:
        # Old events are not replayed: open, then create.
        os.mkdir(f"{c}/instances/before")
        fd = os.open(f"{c}/events", os.O_RDONLY)
        p = select.poll()
        p.register(fd, select.POLLIN)
        if p.poll(0):
            fail("poll reports data before any event", log)
        os.mkdir(f"{c}/instances/web-1")
        if not p.poll(DEADLINE_S * 1000):
            fail("poll did not wake for a new event", log)
        got = read_until(fd, b"instance_created web-1", log)
        if b"before" in got:
            fail(f"an event from before the open was delivered: {got!r}", log)
        line = got.decode().splitlines()[0].split(" ")
        if not line[0].isdigit() or line[1] != "instance_created" or line[2] != "web-1":
            fail(f"event line format: {got!r}", log)

        # A concurrent reader (cat) sees writes made by another process.
        cat = subprocess.Popen(["cat", f"{c}/events"], stdout=subprocess.PIPE)
        readers.append(cat)
        # Make sure cat has opened the file before writing: its open is visible in /proc.
        end = time.monotonic() + DEADLINE_S
        while not any(os.path.realpath(f"/proc/{cat.pid}/fd/{x}") == f"{c}/events"
                      for x in os.listdir(f"/proc/{cat.pid}/fd")):
            if time.monotonic() > end:
                fail("cat never opened events", log)
            time.sleep(0.01)
        with open(f"{c}/instances/web-1/ram_mb", "w") as f:
            f.write("512\n")
        read_until(cat.stdout.fileno(), b"instance_updated web-1 fields=ram_mb", log)

        # Ctrl-C ends a blocked cat.
        cat.send_signal(signal.SIGINT)
        try:
            cat.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            fail("SIGINT did not end a cat blocked on events", log)

        # 100 blocked readers, then the tree must still answer reads and writes, and every reader
        # must get the next event.
        many = [subprocess.Popen(["cat", f"{c}/events"], stdout=subprocess.PIPE) for _ in range(100)]
        readers.extend(many)
        for i in range(20):
            with open(f"{c}/instances/web-1/cpu_percent", "w") as f:
                f.write(f"{100 + i}\n")
            with open(f"{c}/status") as f:
                if "health ok" not in f.read():
                    fail("status unreadable while readers wait", log)
        for r in many:
            read_until(r.stdout.fileno(), b"fields=cpu_percent", log)
        for r in many:
            r.kill()
        for r in many:
            r.wait(timeout=DEADLINE_S)

        # Non-blocking read with nothing new: EAGAIN, not a hang.
        nb = os.open(f"{c}/events", os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.read(nb, 100)
            fail("non-blocking read with no events returned data", log)
        except BlockingIOError:
            pass
        os.close(nb)
        os.close(fd)
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
        pid = open(f"{data}/constellationd.pid").read().strip()
        os.kill(int(pid), signal.SIGTERM)
        end = time.monotonic() + DEADLINE_S
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
            time.sleep(0.05)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["umount", "-l", mount])
            fail("daemon did not stop on SIGTERM", log)
    remove_cgroups(cgroups)
    text = open(log).read()
    if "stopped cleanly" not in text or "Sanitizer" in text:
        fail("daemon did not stop cleanly", log)
    subprocess.run(["rm", "-rf", tmp])
    print("PASS")


if __name__ == "__main__":
    main()
