#!/usr/bin/env python3
"""kill -9 the daemon while writers keep cluster/ busy; after each restart every file whose
fsync, fdatasync, close, rename, truncate or unlink returned holds exactly the acknowledged bytes.

Each writer owns a directory and keeps a model of its files: the content of every acknowledged
operation, and the operation in flight when the daemon died. After a restart each file must hold
its acknowledged content or, for the file in flight, the content before or after that one
operation (the operations are atomic: a flush commits all of a file's buffered data in one
commit), and no other file may exist. Sizes range from empty to several chunks (4 MiB), writes
land at random offsets (sparse included), and some files are only closed, never fsync'd.

Seeded: FS_CRASH_SEED=N replays a run's choices (the kill's timing still varies); the default is
a fixed seed, FS_CRASH_SEED=random picks one.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

DAEMON = os.environ["CONSTELLATIOND"]
WRITERS = 4
ROUNDS = 3
ACKS_PER_ROUND = 40  # acknowledged operations, over all writers, before the kill
FILES_PER_WRITER = 6
DEADLINE_S = 120
GONE = None  # a path that must not exist


def fail(msg, log=None):
    print("FAIL:", msg, file=sys.stderr)
    if log and os.path.exists(log):
        sys.stderr.write(open(log).read()[-3000:])
    sys.exit(1)


def describe(content):
    if content is GONE:
        return "absent"
    return f"{len(content)} bytes"


class Writer(threading.Thread):
    """Runs random file operations in its directory until the daemon is gone."""

    def __init__(self, directory, seed, model, serial):
        super().__init__(daemon=True)
        self.dir = directory
        self.rng = random.Random(seed)
        self.model = model  # name -> bytes of every acknowledged file
        self.serial = serial  # next file number
        self.acked = 0
        self.pending = {}  # name -> the contents it may hold if the daemon died mid-operation
        self.error = None

    def data(self):
        r = self.rng.random()
        if r < 0.55:
            n = self.rng.randrange(0, 64 << 10)
        elif r < 0.9:
            n = self.rng.randrange(64 << 10, 1 << 20)
        else:
            n = self.rng.randrange(4 << 20, 9 << 20)
        # Random bytes (not a repeated pattern), cheap to make: a seeded block, rotated.
        block = self.rng.randbytes(min(n, 1 << 16) or 1)
        reps = n // len(block) + 1
        return (block * reps)[:n]

    def durable(self, fd):
        c = self.rng.random()
        if c < 0.4:
            os.fsync(fd)
        elif c < 0.6:
            os.fdatasync(fd)
        # else close alone makes it durable

    def write_all(self, fd, data, offset=0):
        pos = 0
        while pos < len(data):
            n = self.rng.choice([4096, 65536, 1 << 20, len(data) - pos])
            pos += os.pwrite(fd, data[pos:pos + n], offset + pos)

    def op(self):
        names = sorted(self.model)
        kind = self.rng.random()
        if not names or (kind < 0.3 and len(names) < FILES_PER_WRITER):
            name = f"f{self.serial}"
            self.serial += 1
            data = self.data()
            self.pending = {name: [GONE, b"", data]}
            fd = os.open(f"{self.dir}/{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                self.write_all(fd, data)
                self.durable(fd)
            finally:
                os.close(fd)
            self.model[name] = data
            return
        name = self.rng.choice(names)
        old = self.model[name]
        path = f"{self.dir}/{name}"
        if kind < 0.55:  # overwrite a range, possibly past the end (a hole between)
            off = self.rng.randrange(0, len(old) + (1 << 20))
            patch = self.data()[: self.rng.randrange(1, 6 << 20)]
            new = bytearray(old)
            if len(new) < off:
                new += b"\0" * (off - len(new))
            new[off:off + len(patch)] = patch
            new = bytes(new)
            self.pending = {name: [old, new]}
            fd = os.open(path, os.O_WRONLY)
            try:
                self.write_all(fd, patch, off)
                self.durable(fd)
            finally:
                os.close(fd)
        elif kind < 0.65:  # append
            patch = self.data()
            new = old + patch
            self.pending = {name: [old, new]}
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, patch)
                self.durable(fd)
            finally:
                os.close(fd)
        elif kind < 0.75:  # truncate, shorter or longer
            size = self.rng.randrange(0, len(old) + (2 << 20))
            new = old[:size] + b"\0" * max(0, size - len(old))
            self.pending = {name: [old, new]}
            os.truncate(path, size)
        elif kind < 0.9:  # replace through a temporary file and rename, as editors and git do
            new = self.data()
            tmp = f"tmp{self.serial}"
            self.serial += 1
            self.pending = {name: [old, new], tmp: "any"}
            fd = os.open(f"{self.dir}/{tmp}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                self.write_all(fd, new)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(f"{self.dir}/{tmp}", path)
        else:
            new = GONE
            self.pending = {name: [old, GONE]}
            os.unlink(path)
        if new is GONE:
            del self.model[name]
        else:
            self.model[name] = new

    def run(self):
        while True:
            try:
                self.op()
            except OSError:
                return  # the daemon is gone: the operation in flight has an unknown outcome
            except Exception as e:  # a bug in the test itself
                self.error = e
                return
            self.pending = {}
            self.acked += 1


def start(data, mount, log):
    subprocess.run([DAEMON, "--data", data, "--mount", mount, "--name", "node-a", "--log", log],
                   check=True)
    return int(open(f"{data}/constellationd.pid").read())


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return GONE


def check(writer, log):
    """Compares the directory with the model; settles the operation in flight."""
    on_disk = set(os.listdir(writer.dir))
    expected = set(writer.model) | set(writer.pending)
    extra = sorted(on_disk - expected)
    if extra:
        fail(f"{writer.dir}: files nobody created: {extra}", log)
    for name in sorted(expected):
        got = read(f"{writer.dir}/{name}")
        allowed = writer.pending.get(name)
        if allowed == "any":
            if got is not GONE:
                os.unlink(f"{writer.dir}/{name}")  # an interrupted temporary file
            continue
        if allowed is None:
            allowed = [writer.model.get(name, GONE)]
        if not any(got == a for a in allowed):
            fail(f"{writer.dir}/{name}: holds {describe(got)}, expected one of "
                 f"{[describe(a) for a in allowed]} (first difference at byte "
                 f"{first_difference(got, allowed[-1])})", log)
        if got is GONE:
            writer.model.pop(name, None)
        else:
            writer.model[name] = got
    writer.pending = {}


def first_difference(a, b):
    if a is GONE or b is GONE:
        return 0
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    env = os.environ.get("FS_CRASH_SEED", "")
    seed = int.from_bytes(os.urandom(4), "little") if env == "random" else int(env or 7)
    print(f"fs_crash: seed {seed} (replay: FS_CRASH_SEED={seed})", flush=True)
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="cn-fscrash.")
    mount, data, log = f"{tmp}/m", f"{tmp}/data", f"{tmp}/daemon.log"
    pid = start(data, mount, log)
    dirs = [f"{mount}/cluster/w{k}" for k in range(WRITERS)]
    for d in dirs:
        os.mkdir(d)
    models = [dict() for _ in dirs]
    serials = [0] * WRITERS
    total = 0
    try:
        for rnd in range(ROUNDS):
            writers = [Writer(dirs[k], rng.randrange(1 << 30), models[k], serials[k])
                       for k in range(WRITERS)]
            for w in writers:
                w.start()
            end = time.monotonic() + DEADLINE_S
            while sum(w.acked for w in writers) < ACKS_PER_ROUND:
                if time.monotonic() > end:
                    fail("writers made no progress", log)
                if not any(w.is_alive() for w in writers):
                    fail(f"all writers stopped before the kill: "
                         f"{[str(w.error) for w in writers if w.error]}", log)
                time.sleep(0.01)
            # Land the kill at a varying point of the writers' operations.
            time.sleep(rng.random() * 0.3)
            os.kill(pid, signal.SIGKILL)
            for w in writers:
                w.join(DEADLINE_S)
                if w.is_alive():
                    fail(f"writer of {w.dir} hung after the daemon died", log)
                if w.error:
                    fail(f"writer of {w.dir}: test error {w.error!r}")
                serials[writers.index(w)] = w.serial
            end = time.monotonic() + DEADLINE_S
            while os.path.exists(f"/proc/{pid}"):
                if time.monotonic() > end:
                    fail("daemon survived SIGKILL")
                time.sleep(0.01)
            pid = start(data, mount, log)
            for w in writers:
                check(w, log)
            acked = sum(w.acked for w in writers)
            total += acked
            files = sum(len(m) for m in models)
            size = sum(len(c) for m in models for c in m.values())
            print(f"round {rnd}: {acked} acknowledged operations; {files} files "
                  f"({size >> 10} KiB) verified byte for byte", flush=True)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + DEADLINE_S
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            subprocess.run(["umount", "-l", mount], stderr=subprocess.DEVNULL)
    if "Sanitizer" in open(log).read():
        fail("sanitizer report in the daemon log", log)
    subprocess.run(["rm", "-rf", tmp])
    print(f"PASS ({total} acknowledged operations over {ROUNDS} kills)")


if __name__ == "__main__":
    main()
