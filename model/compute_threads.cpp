#include "model/compute_threads.hpp"

#include <algorithm>
#include <thread>

#include <ATen/Parallel.h>

// OpenBLAS's own thread count is not governed by at::set_num_threads.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace ceco {

void set_compute_threads(int n) {
  if (n <= 0)
    n = int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  // The decode kernels parallelise over OpenMP threads, which spin between
  // regions; OpenBLAS threads on the same cores would fight them and made
  // 2-thread prefill 5x slower here. Batched products stay single-threaded.
  if (openblas_set_num_threads)
    openblas_set_num_threads(1);
}

void set_blas_threads(int n) {
  at::set_num_threads(n);
  if (openblas_set_num_threads)
    openblas_set_num_threads(n);
}

} // namespace ceco
