#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

namespace ceco {

/// Threads for the decode kernels and libtorch's own ops (0 = all cores);
/// OpenBLAS stays at one thread.
void set_compute_threads(int n);
/// Threads of OpenBLAS itself, for big batched products (training).
void set_blas_threads(int n);
/// Restarts the program (execv of /proc/self/exe with `argv`) with
/// OPENBLAS_CORETYPE set from the CPU's features when OpenBLAS did not know
/// the CPU and fell back to its generic kernels; returns otherwise. Call it
/// first in a main that links libtorch (the test program; `ceco` itself
/// sets the variable in its launcher, before the engine starts).
void use_fast_blas_kernels(char** argv);
/// The BLAS and its kernels, as the library names them: "OpenBLAS Haswell".
std::string blas_kernels();

/// Calls body(i) exactly once for each i in [0, n_chunks), on the calling
/// thread and up to n_threads - 1 pool workers, and returns when every call
/// has returned. Chunks are claimed one at a time from a shared counter:
/// the caller takes part and never waits for a worker that has not started
/// (a descheduled one, on a loaded machine), only for chunks in progress.
/// Runs everything on the caller when n_threads <= 1, when called from a
/// chunk, or while another thread's chunks hold the pool. `body` must not
/// throw.
template <class Body>
void parallel_chunks(int64_t n_chunks, int n_threads, Body&& body);

/// Calls body(begin, end) on consecutive ranges that cover [0, n), through
/// parallel_chunks: about four ranges per thread, each a multiple of `align`
/// items but the last. One range, [0, n), when n_threads <= 1.
template <class Body>
void parallel_ranges(int64_t n, int n_threads, int64_t align, Body&& body);

namespace detail {
void run_chunks(int64_t n_chunks, int n_threads, void (*call)(void*, int64_t), void* body);
} // namespace detail

template <class Body>
void parallel_chunks(int64_t n_chunks, int n_threads, Body&& body) {
  detail::run_chunks(
    n_chunks, n_threads,
    [](void* b, int64_t i) { (*static_cast<std::remove_reference_t<Body>*>(b))(i); },
    const_cast<void*>(static_cast<const void*>(&body)));
}

template <class Body>
void parallel_ranges(int64_t n, int n_threads, int64_t align, Body&& body) {
  if (n_threads <= 1 || n <= align) {
    body(int64_t(0), n);
    return;
  }
  const int64_t target = (n + 4 * n_threads - 1) / (4 * int64_t(n_threads));
  const int64_t size = (std::max(target, align) + align - 1) / align * align;
  parallel_chunks((n + size - 1) / size, n_threads,
                  [&](int64_t c) { body(c * size, std::min(n, (c + 1) * size)); });
}

} // namespace ceco
