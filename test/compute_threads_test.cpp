#include "test/support.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "model/compute_threads.hpp"

using namespace ceco;

namespace {

/// How many times parallel_chunks called each chunk.
std::vector<int> chunk_calls(int64_t n_chunks, int n_threads) {
  const size_t n = size_t(n_chunks);
  std::vector<std::atomic<int>> calls(n);
  for (auto& c : calls)
    c = 0;
  parallel_chunks(n_chunks, n_threads, [&](int64_t i) { calls[size_t(i)].fetch_add(1); });
  std::vector<int> out;
  for (auto& c : calls)
    out.push_back(c.load());
  return out;
}

} // namespace

TEST_CASE("parallel_chunks calls every chunk exactly once, for any chunk and thread count") {
  for (int threads : {1, 2, 3, 8})
    for (int64_t n : {0, 1, 2, 7, 1000, 100000}) {
      CAPTURE(threads);
      CAPTURE(n);
      const auto calls = chunk_calls(n, threads);
      CHECK(std::count(calls.begin(), calls.end(), 1) == n);
    }
}

TEST_CASE("parallel_chunks from several threads at once, and from inside a chunk") {
  // Jobs submitted while the pool is busy run on their caller; a chunk that
  // asks for chunks of its own runs them inline. Either way each runs once.
  std::atomic<int> wrong{0};
  std::vector<std::thread> submitters;
  for (int s = 0; s < 4; ++s)
    submitters.emplace_back([&] {
      for (int job = 0; job < 200; ++job) {
        const auto calls = chunk_calls(64, 3);
        if (std::count(calls.begin(), calls.end(), 1) != 64)
          ++wrong;
      }
    });
  for (auto& t : submitters)
    t.join();
  CHECK(wrong == 0);

  std::vector<std::atomic<int>> inner(16 * 16);
  for (auto& c : inner)
    c = 0;
  parallel_chunks(16, 4, [&](int64_t i) {
    parallel_chunks(16, 4, [&](int64_t j) { inner[size_t(i * 16 + j)].fetch_add(1); });
  });
  CHECK(std::all_of(inner.begin(), inner.end(), [](const auto& c) { return c.load() == 1; }));
}

TEST_CASE("parallel_ranges covers every item once, in ranges that start at multiples of the alignment") {
  for (int threads : {1, 2, 5})
    for (int64_t n : {1, 3, 4, 13, 768, 32001})
      for (int64_t align : {1, 4}) {
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(align);
        std::mutex m;
        std::vector<std::pair<int64_t, int64_t>> ranges;
        parallel_ranges(n, threads, align, [&](int64_t b, int64_t e) {
          std::lock_guard<std::mutex> lock(m);
          ranges.emplace_back(b, e);
        });
        std::sort(ranges.begin(), ranges.end());
        int64_t next = 0;
        for (auto [b, e] : ranges) {
          CHECK(b == next);
          CHECK(b % align == 0);
          CHECK(e > b);
          next = e;
        }
        CHECK(next == n);
        if (threads > 1 && n >= 768)
          CHECK(ranges.size() > 1);
      }
}
