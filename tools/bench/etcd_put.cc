// bench_etcd_put: the peer baseline of tools/bench/cluster's rate case. T threads each Put their
// own key (bench-0..T-1) to an etcd v3 endpoint over gRPC, one request in flight per thread, the
// values alternating through --values, as bench_write_latency's writers each pwrite their own
// instance's ram_mb. Prints one line in bench_write_latency's format:
//
//   mode=etcd-put threads=64 ops=19200 errors=0 p50_us=7490.1 p90_us=... p99_us=... max_us=...
//   ops_per_s=7896 elapsed_s=2.431
//
// Every thread first does --warmup unmeasured Puts; the measured phase starts for all at once.
// The threads share --conns gRPC channels (TCP connections), round robin; etcd's own benchmark
// tool defaults to one. A failed Put ends its thread's run; the tool then prints the error and
// exits 1.
#include <getopt.h>
#include <grpcpp/grpcpp.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "etcd_kv.grpc.pb.h"
#include "tools/bench/bench_util.h"

namespace {

using bench::NowNs;
using bench::PercentileUs;
using bench::StartGate;

constexpr char kUsage[] = R"(usage: bench_etcd_put --endpoint HOST:PORT --iterations N [options]

Times etcd v3 Puts (gRPC) from concurrent threads, each on its own key; prints p50, p90, p99, max
(microseconds) and ops/s on one line.

  --endpoint HOST:PORT  the etcd member to send to (its client URL without http://)
  --iterations N        measured Puts per thread (1..10000000)
  --warmup N            unmeasured Puts per thread first (default 20)
  --values A,B,...      values written in turn (default 256,512)
  --threads T           concurrent writers, each Putting key bench-<index> (1..1024, default 1)
  --conns C             gRPC channels the threads share (1..256, default 1)
)";

constexpr int64_t kMaxIterations = 10'000'000;
constexpr int64_t kMaxSamples = 50'000'000;  // iterations × threads, bounds the sample memory
constexpr int kMaxThreads = 1024;
constexpr int kMaxConns = 256;
constexpr int kDeadlineS = 30;  // one Put; etcd answers within its election timeout or fails

struct Config {
  std::string endpoint;
  int64_t iterations = 0;
  int64_t warmup = 20;
  std::vector<std::string> values = {"256", "512"};
  int threads = 1;
  int conns = 1;
};

struct Worker {
  std::string key;
  std::vector<int64_t> samples_ns;
  int64_t end_ns = 0;
  std::string error;  // empty when every Put succeeded
};

// One Put; false (with w->error set) on failure.
bool Put(etcdserverpb::KV::Stub* stub, Worker* w, const std::string& value) {
  etcdserverpb::PutRequest request;
  request.set_key(w->key);
  request.set_value(value);
  etcdserverpb::PutResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(kDeadlineS));
  grpc::Status s = stub->Put(&context, request, &response);
  if (!s.ok()) w->error = "put " + w->key + ": " + s.error_message();
  return s.ok();
}

void Run(const Config& c, etcdserverpb::KV::Stub* stub, StartGate* gate, Worker* w) {
  size_t next_value = 0;
  for (int64_t i = 0; i < c.warmup && w->error.empty(); ++i) {
    Put(stub, w, c.values[next_value++ % c.values.size()]);
  }
  gate->ArriveAndWait();
  w->samples_ns.reserve(static_cast<size_t>(c.iterations));
  for (int64_t i = 0; i < c.iterations && w->error.empty(); ++i) {
    const std::string& v = c.values[next_value++ % c.values.size()];
    int64_t t0 = NowNs();
    if (!Put(stub, w, v)) break;
    w->samples_ns.push_back(NowNs() - t0);
  }
  w->end_ns = NowNs();
}

bool ParseArgs(int argc, char** argv, Config* c) {
  static const option kOptions[] = {{"endpoint", required_argument, nullptr, 'e'},
                                    {"iterations", required_argument, nullptr, 'n'},
                                    {"warmup", required_argument, nullptr, 'w'},
                                    {"values", required_argument, nullptr, 'v'},
                                    {"threads", required_argument, nullptr, 't'},
                                    {"conns", required_argument, nullptr, 'c'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {nullptr, 0, nullptr, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1) {
    switch (opt) {
      case 'e':
        c->endpoint = optarg;
        break;
      case 'n':
        if (!bench::IntOption("bench_etcd_put", "iterations", optarg, 1, kMaxIterations,
                              &c->iterations))
          return false;
        break;
      case 'w':
        if (!bench::IntOption("bench_etcd_put", "warmup", optarg, 0, kMaxIterations, &c->warmup))
          return false;
        break;
      case 'v': {
        c->values.clear();
        std::string s = optarg;
        for (size_t pos = 0; pos <= s.size();) {
          size_t comma = s.find(',', pos);
          if (comma == std::string::npos) comma = s.size();
          c->values.push_back(s.substr(pos, comma - pos));
          pos = comma + 1;
        }
        if (c->values.size() > 64) {
          fprintf(stderr, "bench_etcd_put: --values: at most 64 values\n");
          return false;
        }
        break;
      }
      case 't':
        if (!bench::IntOption("bench_etcd_put", "threads", optarg, 1, kMaxThreads, &c->threads))
          return false;
        break;
      case 'c':
        if (!bench::IntOption("bench_etcd_put", "conns", optarg, 1, kMaxConns, &c->conns))
          return false;
        break;
      case 'h':
        fputs(kUsage, stdout);
        exit(0);
      default:
        fputs(kUsage, stderr);
        return false;
    }
  }
  if (optind != argc || c->endpoint.empty() || c->iterations == 0) {
    fputs(kUsage, stderr);
    return false;
  }
  if (c->iterations * c->threads > kMaxSamples) {
    fprintf(stderr, "bench_etcd_put: --iterations x --threads: at most %" PRId64 "\n", kMaxSamples);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (!ParseArgs(argc, argv, &c)) return 2;
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> stubs;
  for (int i = 0; i < c.conns; ++i) {
    // A distinct argument per channel: gRPC would otherwise share one connection among them.
    grpc::ChannelArguments args;
    args.SetInt("bench_etcd_put.channel", i);
    stubs.push_back(etcdserverpb::KV::NewStub(
        grpc::CreateCustomChannel(c.endpoint, grpc::InsecureChannelCredentials(), args)));
  }
  std::vector<Worker> workers(static_cast<size_t>(c.threads));
  for (int i = 0; i < c.threads; ++i) workers[i].key = "bench-" + std::to_string(i);
  StartGate gate(c.threads);
  std::vector<std::thread> threads;
  for (int i = 0; i < c.threads; ++i) {
    threads.emplace_back(Run, std::cref(c), stubs[i % c.conns].get(), &gate, &workers[i]);
  }
  for (std::thread& t : threads) t.join();
  std::vector<int64_t> all;
  int64_t end_ns = gate.start_ns();
  for (const Worker& w : workers) {
    if (!w.error.empty()) {
      fprintf(stderr, "bench_etcd_put: %s\n", w.error.c_str());
      return 1;
    }
    all.insert(all.end(), w.samples_ns.begin(), w.samples_ns.end());
    end_ns = std::max(end_ns, w.end_ns);
  }
  std::sort(all.begin(), all.end());
  double elapsed_s = static_cast<double>(end_ns - gate.start_ns()) / 1e9;
  printf(
      "mode=etcd-put threads=%d ops=%zu errors=0 p50_us=%.1f p90_us=%.1f p99_us=%.1f "
      "max_us=%.1f ops_per_s=%.0f elapsed_s=%.3f\n",
      c.threads, all.size(), PercentileUs(all, 0.50), PercentileUs(all, 0.90),
      PercentileUs(all, 0.99), static_cast<double>(all.back()) / 1000.0,
      static_cast<double>(all.size()) / elapsed_s, elapsed_s);
  return 0;
}
