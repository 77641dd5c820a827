#include "model/compute_threads.hpp"
#include "model/blas_coretype.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// OpenBLAS's own thread count is not governed by at::set_num_threads.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" char* openblas_get_corename() __attribute__((weak));

namespace ceco {

void use_fast_blas_kernels(char** argv) {
#if defined(__x86_64__)
  // See model/blas_coretype.hpp. A value the user set is left alone.
  if (!openblas_get_corename || std::getenv("OPENBLAS_CORETYPE") ||
      std::string(openblas_get_corename()) != openblas_generic_core)
    return;
  const char* core = openblas_coretype_for_cpu();
  // This program's file, by its own path (the process keeps its name), and
  // only if argv[0] names it: not under a loader or a tool such as valgrind.
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (!core || n <= 0 || !argv || !argv[0])
    return;
  self[n] = '\0';
  const std::string exe = self, arg0 = argv[0];
  auto base = [](const std::string& p) { return p.substr(p.find_last_of('/') + 1); };
  if (base(exe) != base(arg0) || exe.find(" (deleted)") != std::string::npos)
    return;
  if (setenv("OPENBLAS_CORETYPE", core, 0) != 0)
    return;
  execv(exe.c_str(), argv);  // returns only if it failed: go on as we are
  unsetenv("OPENBLAS_CORETYPE");
#else
  (void)argv;
#endif
}

std::string blas_kernels() {
  return openblas_get_corename ? std::string("OpenBLAS ") + openblas_get_corename() : "BLAS";
}

void set_compute_threads(int n) {
  if (n <= 0)
    n = int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  // The decode kernels parallelise over the chunk pool's threads, which
  // spin between jobs; OpenBLAS threads on the same cores would fight them
  // and made 2-thread prefill 5x slower here. Batched products stay
  // single-threaded.
  if (openblas_set_num_threads)
    openblas_set_num_threads(1);
}

void set_blas_threads(int n) {
  at::set_num_threads(n);
  if (openblas_set_num_threads)
    openblas_set_num_threads(n);
}

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

/// Workers that wait for jobs of chunks. A job is one 64-bit word: its
/// generation, its chunk count and the next unclaimed chunk, so that one
/// fetch_add claims a chunk and tells which job it belongs to; a worker
/// that wakes late claims past the end of a finished job and goes back to
/// waiting.
class chunk_pool {
public:
  static chunk_pool& instance() {
    static chunk_pool pool;
    return pool;
  }

  ~chunk_pool() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stopping_ = true;
    }
    sleep_cv_.notify_all();
    for (auto& t : workers_)
      t.join();
  }

  /// False when another thread's job holds the pool (the caller then runs
  /// its chunks itself).
  bool run(int64_t n_chunks, int n_threads, void (*call)(void*, int64_t), void* body) {
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    if (!job.owns_lock())
      return false;
    grow(n_threads - 1);
    allowed_workers_.store(n_threads - 1, std::memory_order_relaxed);
    call_ = call;
    body_ = body;
    done_.store(0, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & generation_mask;
    state_.store(generation_ << generation_shift | uint64_t(n_chunks) << count_shift,
                 std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      sleep_cv_.notify_all();
    }
    work();
    for (int spins = 0; done_.load(std::memory_order_acquire) < n_chunks; ++spins) {
      if (spins < 4096)
        cpu_relax();
      else
        std::this_thread::yield();  // a worker holding a chunk was descheduled
    }
    return true;
  }

  // The index field counts past the end once per thread that looks for
  // more work: room is left for that.
  static constexpr int64_t max_chunks = int64_t(1) << 19;

private:
  static constexpr int count_shift = 20, generation_shift = 40;
  static constexpr uint64_t index_mask = (uint64_t(1) << 20) - 1;
  static constexpr uint64_t generation_mask = (uint64_t(1) << 24) - 1;

  static uint64_t generation_of(uint64_t s) { return s >> generation_shift; }

  /// Claims and runs chunks of the current job until none is left.
  void work() {
    for (;;) {
      const uint64_t s = state_.fetch_add(1, std::memory_order_acq_rel);
      const uint64_t index = s & index_mask, count = (s >> count_shift) & index_mask;
      if (index >= count)
        return;
      call_(body_, int64_t(index));
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void grow(int n_workers) {
    try {
      while (int(workers_.size()) < n_workers)
        workers_.emplace_back([this, index = int(workers_.size())] { worker(index); });
    } catch (const std::system_error&) {
      // No more threads to be had: the job runs on those there are.
    }
  }

  void worker(int index) {
    uint64_t seen = generation_of(state_.load(std::memory_order_acquire));
    for (;;) {
      // Jobs come every few tens of microseconds while a token is decoded:
      // spin about that long before sleeping.
      uint64_t g = seen;
      for (int spins = 0; spins < 20000 && g == seen; ++spins) {
        cpu_relax();
        g = generation_of(state_.load(std::memory_order_acquire));
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        sleep_cv_.wait(lock, [&] {
          return stopping_ || generation_of(state_.load(std::memory_order_seq_cst)) != seen;
        });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        if (stopping_)
          return;
        g = generation_of(state_.load(std::memory_order_acquire));
      }
      seen = g;
      if (index < allowed_workers_.load(std::memory_order_acquire))
        work();
    }
  }

  std::mutex job_mutex_;  // one job at a time
  uint64_t generation_ = 0;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> allowed_workers_{0};  // of this job
  void (*call_)(void*, int64_t) = nullptr;
  void* body_ = nullptr;
  std::vector<std::thread> workers_;
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::atomic<int> sleepers_{0};
  bool stopping_ = false;
};

thread_local bool inside_chunk = false;

} // namespace

namespace detail {

void run_chunks(int64_t n_chunks, int n_threads, void (*call)(void*, int64_t), void* body) {
  if (n_chunks <= 0)
    return;
  auto run_here = [&] {
    for (int64_t i = 0; i < n_chunks; ++i)
      call(body, i);
  };
  if (n_threads <= 1 || n_chunks == 1 || inside_chunk || n_chunks > chunk_pool::max_chunks) {
    run_here();
    return;
  }
  struct marked {
    void (*call)(void*, int64_t);
    void* body;
  } inner{call, body};
  // Chunks on any thread of the pool mark it, so a nested call runs inline.
  auto marked_call = [](void* m, int64_t i) {
    auto* x = static_cast<marked*>(m);
    const bool was = inside_chunk;
    inside_chunk = true;
    x->call(x->body, i);
    inside_chunk = was;
  };
  if (!chunk_pool::instance().run(n_chunks, n_threads, marked_call, &inner))
    run_here();
}

} // namespace detail

} // namespace ceco
