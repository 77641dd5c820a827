#pragma once

// A cloud session's state in the cloud layers: the KV cache of layers
// [split, L) (or [split, first stage) when the cloud's layers are cut into
// stages) and the last layer's output per computed position (kept by the
// last stage instead, when there are stages). Only the cloud layers (and
// tests) see inside; the context manager holds it as an opaque
// cloud_context_ptr and cuts it back on a rollback (rewind).

#include <ATen/core/Tensor.h>

#include "actors/messages.hpp"
#include "model/kv_cache.hpp"

namespace ceco {

struct cloud_context {
  explicit cloud_context(kv_cache c) : cache(std::move(c)) {
    // nop
  }
  /// The session's contexts on the stages go with it, however it ends
  /// (closed, expired, its node stopping).
  ~cloud_context() {
    if (stage)
      caf::anon_send(stage, close_atom::value, stage_key);
  }
  cloud_context(const cloud_context&) = delete;
  cloud_context& operator=(const cloud_context&) = delete;

  kv_cache cache;           // layers [split, L), or up to the first stage
  at::Tensor final_hidden;  // [capacity, n_embd]: last layer's output per position (no stages)
  int32_t computed = 0;     // positions [0, computed) went through every cloud layer
  layer_stage_actor stage;  // the first stage, if any
  uint64_t stage_key = 0;   // this session's context there
};

} // namespace ceco
