// bench_instances: how fast instances start, beside process-creation baselines measured in the same
// run, and what running many costs the daemon. Run by tools/bench/instances (docs/benchmarks.md).
//
//   bench_instances latency --tree DIR --fifo FIFO --reporter PATH --count N
//                           [--crun-bundle DIR --crun-root DIR] [--samples DIR]
//     Round-robin over the cases, N times each (so a change in the machine's load hits all alike):
//       constellation  write("start") to instances/lat-I/ctl -> the command (bench_reporter)
//       reports unshare        spawn `unshare --pid --fork --mount --uts --ipc REPORTER` -> it
//       reports unshare_true   spawn `unshare --pid --fork --mount --uts --ipc /bin/true` -> it has
//       exited crun           spawn `crun run` of a bundle whose process is the reporter -> it
//       reports
//     The instances lat-0..N-1 are made beforehand (mkdir, spec) and removed afterwards.
//   bench_instances many --tree DIR --fifo FIFO --reporter PATH --count M --threads T
//                        --daemon-pid PID
//     M instances made and started by T concurrent writers; done when every command has reported.
//     Beside it: M runs of `unshare ... /bin/true` by T threads. Then the daemon's RSS growth per
//     running instance, the processes the daemon has beyond the instances' own, and removal.
// Output: one `key=value` line per figure (latencies in µs).
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tools/bench/bench_util.h"

extern char** environ;

namespace {

using bench::NowNs;

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "bench_instances: %s\n", what.c_str());
  exit(1);
}

void WriteFile(const std::string& path, const std::string& value) {
  int fd = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) Die("open " + path + ": " + strerror(errno));
  ssize_t n = write(fd, value.data(), value.size());
  int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(value.size())) Die("write " + path + ": " + strerror(err));
}

// Lines arriving on the fifo, each stamped when read. The fifo is opened read-write, so writers
// never block on open and the reader never sees end-of-file.
class Fifo {
 public:
  explicit Fifo(const std::string& path) {
    fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) Die("open fifo " + path + ": " + strerror(errno));
    thread_ = std::thread([this] { Loop(); });
  }
  ~Fifo() {
    stop_ = true;
    ssize_t n = write(fd_, "\n", 1);  // wakes the reader
    (void)n;
    thread_.join();
    close(fd_);
  }
  // When `id` arrived (waits for it, bounded); consumes it. With `child`, gives up as soon as
  // that process has failed.
  int64_t Wait(const std::string& id, pid_t child = 0, int timeout_s = 60) {
    std::unique_lock<std::mutex> l(mu_);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (!cv_.wait_for(l, std::chrono::milliseconds(100), [&] { return seen_.count(id) > 0; })) {
      int status = 0;
      if (child > 0 && waitpid(child, &status, WNOHANG) == child) {
        Die("no report from " + id + ": its launcher exited with status " +
            std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        Die("no report from " + id + " within " + std::to_string(timeout_s) + " s");
      }
    }
    int64_t t = seen_[id];
    seen_.erase(id);
    return t;
  }
  // Waits until `n` lines starting with `prefix` arrived; returns when the last did.
  int64_t WaitCount(const std::string& prefix, size_t n, int timeout_s) {
    std::unique_lock<std::mutex> l(mu_);
    auto count = [&] {
      size_t c = 0;
      for (const auto& [k, v] : seen_) c += k.rfind(prefix, 0) == 0;
      return c;
    };
    if (!cv_.wait_for(l, std::chrono::seconds(timeout_s), [&] { return count() >= n; })) {
      Die("only " + std::to_string(count()) + " of " + std::to_string(n) + " reports");
    }
    int64_t last = 0;
    for (const auto& [k, v] : seen_) {
      if (k.rfind(prefix, 0) == 0) last = std::max(last, v);
    }
    return last;
  }

 private:
  void Loop() {
    std::string pending;
    char buf[4096];
    while (!stop_) {
      ssize_t n = read(fd_, buf, sizeof buf);
      int64_t t = NowNs();
      if (n <= 0) continue;
      pending.append(buf, static_cast<size_t>(n));
      std::lock_guard<std::mutex> l(mu_);
      for (size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        if (!line.empty()) seen_[line] = t;
      }
      cv_.notify_all();
    }
  }
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int64_t> seen_;
  std::thread thread_;
};

pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) Die("spawn " + args[0] + ": " + strerror(rc));
  return pid;
}

int WaitPid(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

struct Summary {
  double p50_us = 0, p99_us = 0, max_us = 0, mean_us = 0;
};
Summary Summarize(std::vector<int64_t> ns) {
  Summary s;
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    size_t i = static_cast<size_t>(q * static_cast<double>(ns.size()) + 0.999999);
    return static_cast<double>(ns[std::min(ns.size(), std::max<size_t>(i, 1)) - 1]) / 1000;
  };
  s.p50_us = at(0.50);
  s.p99_us = at(0.99);
  s.max_us = static_cast<double>(ns.back()) / 1000;
  double sum = 0;
  for (int64_t v : ns) sum += static_cast<double>(v);
  s.mean_us = sum / static_cast<double>(ns.size()) / 1000;
  return s;
}

void Print(const std::string& name, const std::vector<int64_t>& ns, const std::string& samples) {
  Summary s = Summarize(ns);
  printf("case=%s n=%zu p50_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f\n", name.c_str(),
         ns.size(), s.p50_us, s.p99_us, s.max_us, s.mean_us);
  if (!samples.empty()) {
    std::ofstream out(samples + "/" + name);
    for (int64_t v : ns) out << v << "\n";
  }
}

struct Flags {
  std::string mode, tree, fifo, reporter, crun_bundle, crun_root, samples;
  int count = 200, threads = 16;
  pid_t daemon_pid = 0;
};

std::vector<std::string> Unshare(const std::vector<std::string>& command) {
  std::vector<std::string> a = {"unshare", "--pid", "--fork", "--mount", "--uts", "--ipc"};
  a.insert(a.end(), command.begin(), command.end());
  return a;
}

// crun refuses a host whose cgroup v2 hierarchy has a controller beside the v1 ones ("cgroups in
// hybrid mode not supported"). In a mount namespace of this tool's own, without the v2 mount, it
// sees plain v1 and manages its cgroups as we do. Our daemon and the unshare baselines do not care.
void HideCgroup2() {
  if (unshare(CLONE_NEWNS) != 0) Die(std::string("unshare(CLONE_NEWNS): ") + strerror(errno));
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) Die("make / private");
  std::ifstream in("/proc/self/mounts");
  std::string dev, dir, type;
  while (in >> dev >> dir >> type) {
    if (type == "cgroup2" && dir != "/sys/fs/cgroup") umount2(dir.c_str(), MNT_DETACH);
    in.ignore(4096, '\n');
  }
}

void Latency(const Flags& f) {
  if (!f.crun_bundle.empty()) HideCgroup2();
  Fifo fifo(f.fifo);
  std::string inst = f.tree + "/instances/";
  for (int i = 0; i < f.count; ++i) {
    std::string d = inst + "lat-" + std::to_string(i);
    if (mkdir(d.c_str(), 0755) != 0) Die("mkdir " + d + ": " + strerror(errno));
    WriteFile(d + "/spec", "cmd=" + f.reporter + " " + f.fifo + " lat-" + std::to_string(i) +
                               "\nrestart=never\nram_mb=64\ncpu_percent=100\n");
  }
  std::vector<int64_t> ours, ours_write, unshare, unshare_true, crun;
  for (int i = 0; i < f.count; ++i) {
    // constellation: from write("start") to the command's report.
    std::string id = "lat-" + std::to_string(i);
    std::string ctl = inst + id + "/ctl";
    int fd = open(ctl.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) Die("open " + ctl + ": " + strerror(errno));
    int64_t t0 = NowNs();
    ssize_t n = write(fd, "start\n", 6);
    int64_t tw = NowNs();
    if (n != 6) Die("start " + id + ": " + strerror(errno));
    close(fd);
    ours.push_back(fifo.Wait(id) - t0);
    ours_write.push_back(tw - t0);

    std::string uid = "u-" + std::to_string(i);
    t0 = NowNs();
    pid_t p = Spawn(Unshare({f.reporter, f.fifo, uid}));
    unshare.push_back(fifo.Wait(uid, p) - t0);
    WaitPid(p);

    t0 = NowNs();
    p = Spawn(Unshare({"/bin/true"}));
    int st = WaitPid(p);
    unshare_true.push_back(NowNs() - t0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) Die("unshare /bin/true failed");

    if (!f.crun_bundle.empty()) {
      std::string cid = "cn-bench-" + std::to_string(getpid()) + "-" + std::to_string(i);
      t0 = NowNs();
      p = Spawn({"crun", "--root", f.crun_root, "run", "--bundle", f.crun_bundle, cid});
      crun.push_back(fifo.Wait("crun", p) - t0);
      st = WaitPid(p);
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) Die("crun run failed");
    }
    if ((i + 1) % 50 == 0) fprintf(stderr, "  latency: %d/%d\n", i + 1, f.count);
  }
  Print("constellation", ours, f.samples);
  Print("constellation_write_returned", ours_write, f.samples);
  Print("unshare", unshare, f.samples);
  Print("unshare_true", unshare_true, f.samples);
  if (!crun.empty()) Print("crun", crun, f.samples);
  for (int i = 0; i < f.count; ++i) {
    std::string d = inst + "lat-" + std::to_string(i);
    if (rmdir(d.c_str()) != 0) Die("rmdir " + d + ": " + strerror(errno));
  }
}

uint64_t RssKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

// Processes (not threads) descending from `root`.
size_t Descendants(pid_t root) {
  std::map<pid_t, pid_t> parent;
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    pid_t pid = static_cast<pid_t>(atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
    std::string stat;
    std::getline(in, stat);
    size_t close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    char state;
    int ppid;
    if (sscanf(stat.c_str() + close_paren + 1, " %c %d", &state, &ppid) == 2) parent[pid] = ppid;
  }
  closedir(d);
  size_t n = 0;
  for (const auto& [pid, pp] : parent) {
    for (pid_t p = pp; p > 1; p = parent.count(p) ? parent[p] : 0) {
      if (p == root) {
        ++n;
        break;
      }
    }
  }
  return n;
}

void Parallel(int threads, int count, const std::function<void(int)>& fn) {
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = t; i < count; i += threads) fn(i);
    });
  }
  for (std::thread& t : ts) t.join();
}

void Many(const Flags& f) {
  Fifo fifo(f.fifo);
  std::string inst = f.tree + "/instances/";
  size_t before_desc = Descendants(f.daemon_pid);
  uint64_t rss0 = RssKb(f.daemon_pid);

  int64_t t0 = NowNs();
  Parallel(f.threads, f.count, [&](int i) {
    std::string id = "m-" + std::to_string(i);
    std::string d = inst + id;
    if (mkdir(d.c_str(), 0755) != 0) Die("mkdir " + d + ": " + strerror(errno));
    WriteFile(d + "/spec",
              "cmd=" + f.reporter + " " + f.fifo + " " + id + " stay\nram_mb=16\ncpu_percent=10\n");
    WriteFile(d + "/ctl", "start\n");
  });
  int64_t t_written = NowNs();
  int64_t t_all = fifo.WaitCount("m-", static_cast<size_t>(f.count), 300);
  printf("case=many_start n=%d threads=%d total_s=%.3f writes_done_s=%.3f per_s=%.0f\n", f.count,
         f.threads, (t_all - t0) / 1e9, (t_written - t0) / 1e9, f.count / ((t_all - t0) / 1e9));

  uint64_t rss1 = RssKb(f.daemon_pid);
  size_t desc = Descendants(f.daemon_pid);
  printf("case=memory n=%d rss_before_kb=%lu rss_after_kb=%lu per_instance_kb=%.2f\n", f.count,
         static_cast<unsigned long>(rss0), static_cast<unsigned long>(rss1),
         (static_cast<double>(rss1) - static_cast<double>(rss0)) / f.count);
  printf("case=processes n=%d descendants_before=%zu descendants=%zu extra_per_instance=%.3f\n",
         f.count, before_desc, desc,
         (static_cast<double>(desc) - static_cast<double>(before_desc) - f.count) / f.count);

  // Baseline in the same run: the same count of bare namespace creations, same concurrency.
  int64_t b0 = NowNs();
  Parallel(f.threads, f.count, [&](int) {
    int st = WaitPid(Spawn(Unshare({"/bin/true"})));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) Die("unshare /bin/true failed");
  });
  printf("case=many_unshare_true n=%d threads=%d total_s=%.3f\n", f.count, f.threads,
         (NowNs() - b0) / 1e9);

  int64_t r0 = NowNs();
  Parallel(f.threads, f.count, [&](int i) {
    std::string d = inst + "m-" + std::to_string(i);
    if (rmdir(d.c_str()) != 0) Die("rmdir " + d + ": " + strerror(errno));
  });
  printf("case=many_remove n=%d threads=%d total_s=%.3f\n", f.count, f.threads,
         (NowNs() - r0) / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  if (argc < 2)
    Die("usage: bench_instances latency|many --tree DIR --fifo FIFO --reporter PATH ...");
  f.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--tree") {
      f.tree = value();
    } else if (a == "--fifo") {
      f.fifo = value();
    } else if (a == "--reporter") {
      f.reporter = value();
    } else if (a == "--count") {
      f.count = atoi(value().c_str());
    } else if (a == "--threads") {
      f.threads = atoi(value().c_str());
    } else if (a == "--daemon-pid") {
      f.daemon_pid = static_cast<pid_t>(atoi(value().c_str()));
    } else if (a == "--crun-bundle") {
      f.crun_bundle = value();
    } else if (a == "--crun-root") {
      f.crun_root = value();
    } else if (a == "--samples") {
      f.samples = value();
    } else {
      Die("unknown argument " + a);
    }
  }
  if (f.tree.empty() || f.fifo.empty() || f.reporter.empty()) Die("--tree, --fifo, --reporter");
  if (f.count < 1 || f.count > 100000 || f.threads < 1 || f.threads > 256) Die("bad counts");
  if (f.mode == "latency") {
    Latency(f);
  } else if (f.mode == "many") {
    if (f.daemon_pid <= 0) Die("many needs --daemon-pid");
    Many(f);
  } else {
    Die("unknown mode " + f.mode);
  }
  return 0;
}
