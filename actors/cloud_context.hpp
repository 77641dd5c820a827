#pragma once

// A cloud session's state in the cloud layers: the KV cache of layers
// [split, L) and the last layer's output per computed position. Only the
// cloud layers (and tests) see inside; the context manager holds it as an
// opaque cloud_context_ptr and cuts it back on a rollback (rewind).

#include <ATen/core/Tensor.h>

#include "model/kv_cache.hpp"

namespace ceco {

struct cloud_context {
  explicit cloud_context(kv_cache c) : cache(std::move(c)) {
    // nop
  }
  kv_cache cache;           // layers [split, L)
  at::Tensor final_hidden;  // [capacity, n_embd]: last layer's output per position
  int32_t computed = 0;     // positions [0, computed) went through every cloud layer
};

} // namespace ceco
