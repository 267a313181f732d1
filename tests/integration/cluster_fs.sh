#!/usr/bin/env bash
# cluster/ as a file system programs live on: POSIX basics, real workloads (git, tar, rsync,
# cp -a, SQLite from two processes), durability of fsync'd and closed files across kill -9.
source "$(dirname "$0")/lib.sh"
start_daemon --reserve-mb 1
F=$M/cluster

# Basics.
echo hello > $F/a.txt
expect_eq "$(cat $F/a.txt)" hello "read back"
echo more >> $F/a.txt
expect_eq "$(cat $F/a.txt)" "$(printf 'hello\nmore')" "O_APPEND"
mkdir -p $F/d/e/f
ln -s ../a.txt $F/d/l
expect_eq "$(readlink $F/d/l)" ../a.txt "readlink"
expect_eq "$(cat $F/d/l)" "$(printf 'hello\nmore')" "through the symlink"
ln $F/a.txt $F/d/hard
expect_eq "$(stat -c %h $F/a.txt)" 2 "link count"
mv $F/d/hard $F/d/e/moved
expect_eq "$(stat -c %h $F/d/e/moved)" 2 "link count after rename"
rm $F/d/e/moved
expect_eq "$(stat -c %h $F/a.txt)" 1 "link count after unlink"
chmod 600 $F/a.txt
expect_eq "$(stat -c %a $F/a.txt)" 600 "chmod"
chown 65534:65534 $F/a.txt
expect_eq "$(stat -c %u:%g $F/a.txt)" 65534:65534 "chown"
touch -d '2001-02-03 04:05:06' $F/a.txt
expect_eq "$(stat -c %Y $F/a.txt)" "$(date -d '2001-02-03 04:05:06' +%s)" "utimens"
setfattr -n user.k -v v1 $F/a.txt
expect_eq "$(getfattr --only-values -n user.k $F/a.txt)" v1 "xattr"
mkfifo $F/fifo
[[ -p $F/fifo ]] || fail "mkfifo"
out=$(mkdir $F/d 2>&1) && fail "mkdir over an existing directory"
[[ "$out" == *"File exists"* ]] || fail "EEXIST: $out"
out=$(rmdir $F/d 2>&1) && fail "rmdir of a non-empty directory"
[[ "$out" == *"not empty"* ]] || fail "ENOTEMPTY: $out"
# A removed directory stays usable through an open descriptor (nlink 0, empty, no new entries),
# as on ext4; its inode goes at the last close.
mkdir $F/gone
exec 3<$F/gone
rmdir $F/gone
expect_eq "$(stat -L -c %h /proc/self/fd/3)" 0 "nlink of a removed open directory"
expect_eq "$(ls -a /proc/self/fd/3/)" "" "readdir of a removed open directory (the kernel's rule)"
out=$(touch /proc/self/fd/3/x 2>&1) && fail "created a file in a removed directory"
[[ "$out" == *"No such file"* ]] || fail "ENOENT in a removed directory: $out"
exec 3<&-
name=$(printf 'n%.0s' $(seq 255))
touch "$F/$name" || fail "255-byte name"
out=$(touch "$F/${name}x" 2>&1) && fail "256-byte name accepted"
[[ "$out" == *"too long"* ]] || fail "ENAMETOOLONG: $out"

# Data: larger than a chunk, sparse, truncated, punched.
head -c $((10 * 1024 * 1024 + 12345)) /dev/urandom > $T/rand
cp $T/rand $F/rand
cmp $T/rand $F/rand || fail "10 MiB file differs"
truncate -s 5M $F/rand
cmp -n $((5 * 1024 * 1024)) $T/rand $F/rand || fail "truncate kept the wrong bytes"
expect_eq "$(stat -c %s $F/rand)" $((5 * 1024 * 1024)) "size after truncate"
truncate -s 6G $F/sparse
dd if=/dev/urandom of=$F/sparse bs=4096 count=1 seek=$((5 * 1024 * 1024 / 4)) conv=notrunc status=none
expect_eq "$(stat -c %s $F/sparse)" $((6 * 1024 * 1024 * 1024)) "size of a sparse file > 4 GiB"
(( $(stat -c %b $F/sparse) < 100000 )) || fail "a sparse file allocates its holes"
fallocate -p -o 0 -l 4096 $F/rand
expect_eq "$(head -c 4096 $F/rand | tr -d '\0' | wc -c)" 0 "punched hole reads zeros"

# Random small writes into committed data (kept as sparse ranges, packed into shared chunks, and
# windows rewritten whole once fragmented), interleaved with reads and fsyncs, against a local
# copy; then again after a restart.
head -c $((12 * 1024 * 1024 + 999)) /dev/urandom > $T/rw
cp $T/rw $F/rw
python3 - $F/rw $T/rw <<'PY' || fail "random writes"
import os, random, sys
rng = random.Random(11)
fds = [os.open(p, os.O_RDWR) for p in sys.argv[1:]]
size = os.fstat(fds[1]).st_size
for i in range(6000):
    n = rng.choice([1, 512, 4096, 4096, 4096, 10000])
    off = rng.randrange(0, size + 8192)
    data = rng.randbytes(n)
    for fd in fds:
        os.pwrite(fd, data, off)
    if i % 97 == 0:
        a, b = (os.pread(fd, 65536, max(0, off - 30000)) for fd in fds)
        assert a == b, f"read after write {i} differs at {off}"
    if i % 150 == 149:
        os.fsync(fds[0])
for fd in fds:
    os.close(fd)
PY
cmp $T/rw $F/rw || fail "random writes: the file differs"

# Real workloads.
( cd $F && git init -q repo && cd repo && git config user.email t@t && git config user.name t &&
  for i in 1 2 3; do echo $i >> file; git add file; git commit -qm "c$i"; done &&
  git gc -q && git fsck --full 2>&1 ) > $T/git.out || fail "git: $(cat $T/git.out)"
expect_eq "$(cd $F/repo && git log --oneline | wc -l)" 3 "git log"
tar -C "$(dirname "$0")/../.." -cf $T/src.tar node docs
mkdir $F/untar && tar -C $F/untar -xf $T/src.tar
tar -C $T -xf $T/src.tar
diff -r $T/node $F/untar/node || fail "tar extract differs"
rsync -a $T/node/ $F/rsynced/ && diff -r $T/node $F/rsynced || fail "rsync in"
rsync -a $F/rsynced/ $T/rsynced-out/ && diff -r $T/node $T/rsynced-out || fail "rsync out"
mkdir -p $T/tree/sub && echo x > $T/tree/sub/f && ln $T/tree/sub/f $T/tree/hard &&
  ln -s sub/f $T/tree/sym && setfattr -n user.tag -v 7 $T/tree/sub/f
cp -a $T/tree $F/tree
expect_eq "$(stat -c %h $F/tree/hard)" 2 "cp -a keeps hard links"
expect_eq "$(readlink $F/tree/sym)" sub/f "cp -a keeps symlinks"
expect_eq "$(getfattr --only-values -n user.tag $F/tree/sub/f)" 7 "cp -a keeps xattrs"
for mode in wal delete; do
  db=$F/db-$mode.sqlite
  sqlite3 $db "pragma journal_mode=$mode; create table t(x);" >/dev/null
  for w in 1 2; do
    ( for i in $(seq 40); do sqlite3 -cmd ".timeout 20000" $db "insert into t values($i)"; done ) &
  done
  wait
  expect_eq "$(sqlite3 $db 'select count(*) from t')" 80 "sqlite $mode: rows from two writers"
  expect_eq "$(sqlite3 $db 'pragma integrity_check')" ok "sqlite $mode: integrity"
done

# A build: cmake configures, make compiles and links (object files, archives, dependency files,
# renames of temporaries), the program runs; a second make finds nothing to do, and a touched
# source rebuilds only what depends on it.
mkdir -p $F/proj
cat > $F/proj/CMakeLists.txt <<'CM'
cmake_minimum_required(VERSION 3.13)
project(hello C)
add_library(greet STATIC greet.c)
add_executable(hello main.c)
target_link_libraries(hello greet)
CM
printf '#include <stdio.h>\nvoid greet(const char* w) { printf("hello %%s\\n", w); }\n' > $F/proj/greet.c
printf 'void greet(const char*);\nint main(void) { greet("cluster"); return 0; }\n' > $F/proj/main.c
( cmake -S $F/proj -B $F/proj/build && make -C $F/proj/build ) > $T/build.out 2>&1 ||
  fail "cmake + make: $(tail -20 $T/build.out)"
expect_eq "$($F/proj/build/hello)" "hello cluster" "the built program runs"
make -C $F/proj/build 2>&1 | grep -q "Building C object" && fail "a second make rebuilt something"
touch $F/proj/main.c
make -C $F/proj/build > $T/build2.out 2>&1 || fail "make after touch: $(cat $T/build2.out)"
grep -q "main.c.o" $T/build2.out && ! grep -q "greet.c.o" $T/build2.out ||
  fail "a touched source did not rebuild just its object: $(cat $T/build2.out)"

# Durability: what close or fsync returned survives kill -9, byte for byte.
head -c $((3 * 1024 * 1024)) /dev/urandom > $T/durable
cp $T/durable $F/durable
python3 -c "
import os
fd = os.open('$F/fsynced', os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, open('$T/durable', 'rb').read()[:1000000])
os.fsync(fd)
os.kill(int(open('$D/constellationd.pid').read()), 9)
"
kill9_daemon
start_daemon --reserve-mb 1
cmp $T/durable $F/durable || fail "a closed file changed after kill -9"
cmp -n 1000000 $T/durable $F/fsynced || fail "an fsync'd file changed after kill -9"
expect_eq "$(cat $F/a.txt)" "$(printf 'hello\nmore')" "a.txt after restart"
expect_eq "$(cd $F/repo && git log --oneline | wc -l)" 3 "git after restart"
cmp $T/rw $F/rw || fail "the randomly written file changed after kill -9"

stop_daemon
echo PASS
