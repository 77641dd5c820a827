#pragma once

// OpenBLAS picks its kernels for the CPU model as it loads and falls back to
// its slowest x86-64 ones ("Prescott", SSE3) for a model it does not know:
// Debian 12's OpenBLAS on a recent Xeon prefilled 5x slower so.
// OPENBLAS_CORETYPE names the kernels instead, but is read only as the
// library loads, so it must be set before a process that links it starts:
// `ceco` (apps/launcher.cpp) sets it before it runs the engine, and the test
// program restarts itself with it (use_fast_blas_kernels). Header-only and
// free of libtorch: the launcher links neither.

namespace ceco {

/// What OpenBLAS would report as the kernels it chose on a fallback.
inline constexpr const char* openblas_generic_core = "Prescott";

/// The OPENBLAS_CORETYPE for this CPU's features: "Cooperlake" or
/// "SkylakeX" with AVX-512, "Haswell" with AVX2 and FMA; nullptr where no
/// better kernels than the generic ones apply (and on other architectures).
inline const char* openblas_coretype_for_cpu() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return "Haswell";
#endif
  return nullptr;
}

} // namespace ceco
