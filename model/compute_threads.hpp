#pragma once

namespace ceco {

/// Threads for the decode kernels and libtorch's own ops (0 = all cores);
/// OpenBLAS stays at one thread.
void set_compute_threads(int n);
/// Threads of OpenBLAS itself, for big batched products (training).
void set_blas_threads(int n);

} // namespace ceco
