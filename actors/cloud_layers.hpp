#pragma once

#include <memory>

#include "actors/messages.hpp"

namespace ceco {

class transformer;

/// Bytes a context holds (KV cache and final hidden states).
int64_t cloud_context_bytes(const cloud_context& ctx);

/// The cloud's compute: layers [split, L) for collaborative and naive
/// requests, the whole model for the cloud strategy. Stops generating at
/// `eos`.
cloud_layers_actor spawn_cloud_layers(caf::actor_system& sys,
                                      std::shared_ptr<const transformer> model, int split,
                                      int32_t eos);

} // namespace ceco
