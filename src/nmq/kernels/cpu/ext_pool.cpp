// A small persistent thread pool for the kernels.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include "ext.h"

namespace nmq {
namespace {

int default_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int spin_us() {
  static const int us = [] {
    const char* env = std::getenv("NMQ_SPIN_US");
    return env ? std::max(0, std::atoi(env)) : 2000;
  }();
  return us;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// Workers spin for NMQ_SPIN_US microseconds (default 2000) after each job
// (back-to-back layers then start without a futex wake-up) and sleep
// otherwise, so idle nmq threads do not compete with PyTorch's own pool.
// Work is handed out in chunks from a shared counter: on a machine shared
// with other processes a descheduled worker delays nothing but the chunk it
// holds, and one that wakes late finds no work and leaves.
class Pool {
 public:
  ~Pool() { resize(1); }

  int size() {
    std::lock_guard<std::mutex> lock(run_mu_);
    return int(workers_.size()) + 1;
  }

  void resize(int n) {
    std::lock_guard<std::mutex> lock(run_mu_);
    n = std::max(1, n);
    if (int(workers_.size()) + 1 == n) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_ = false;
    const uint64_t g0 = gen_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, g0] { loop(g0); });
  }

  // fn(lo, hi) over [0, n) in chunks of `chunk`, on all threads.
  void run(int n, int chunk, const std::function<void(int, int)>& fn) {
    std::lock_guard<std::mutex> lock(run_mu_);
    chunk = std::max(1, chunk);
    if (workers_.empty() || n <= chunk) {
      if (n > 0) fn(0, n);
      return;
    }
    job_ = &fn;
    n_ = n;
    chunk_ = chunk;
    next_.store(0);
    closed_.store(false);
    {
      std::lock_guard<std::mutex> l(mu_);
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    work();
    closed_.store(true);
    while (active_.load() != 0) cpu_relax();
    job_ = nullptr;
  }

 private:
  void work() {
    for (;;) {
      int lo = next_.fetch_add(chunk_);
      if (lo >= n_) return;
      (*job_)(lo, std::min(n_, lo + chunk_));
    }
  }

  void loop(uint64_t seen) {
    for (;;) {
      // Spin for a while first: a model's next layer usually comes within a
      // millisecond, and waking a sleeping thread (a futex, on a VM an
      // interrupt to the host) costs a good part of a small layer's time.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us());
      while (gen_.load() == seen) {
        for (int i = 0; i < 64 && gen_.load() == seen; ++i) cpu_relax();
        if (std::chrono::steady_clock::now() >= until) break;
      }
      if (gen_.load() == seen) {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return gen_.load() != seen; });
      }
      seen = gen_.load();
      if (stop_) return;
      active_.fetch_add(1);
      if (!closed_.load()) work();
      active_.fetch_sub(1);
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> next_{0}, active_{0};
  std::atomic<bool> closed_{true};
  const std::function<void(int, int)>* job_ = nullptr;
  int n_ = 0, chunk_ = 1;
  bool stop_ = false;
};

Pool& pool() {
  static Pool* p = [] {
    auto* q = new Pool();
    int n = default_threads();
    if (const char* env = std::getenv("NMQ_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) n = v;
    }
    q->resize(n);
    return q;
  }();
  return *p;
}

}  // namespace

void parallel_for(int n, int chunk, const std::function<void(int, int)>& fn) { pool().run(n, chunk, fn); }

int pool_threads() { return pool().size(); }

void set_pool_threads(int n) { pool().resize(n); }

}  // namespace nmq
