#pragma once

// The edge site's actors: edge layers (layers [0, split) with a KV cache per
// session), the exit evaluator (heads, confidence, threshold) and the
// uploader (split-layer states to the cloud, in the configured dtype).

#include <memory>
#include <vector>

#include "actors/messages.hpp"

namespace ceco {

class transformer;
class exit_heads;

/// Exit layers may be empty (naive split needs none); each must be <= split.
edge_layers_actor spawn_edge_layers(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int split,
                                    std::vector<int> exits);

struct exit_policy {
  float threshold = 0.8f;
  int min_exit_layer = 1;
};

exit_evaluator_actor spawn_exit_evaluator(caf::actor_system& sys, const exit_heads& heads,
                                          int n_embd, exit_policy policy);

/// `timeout` bounds how long an upload may wait for the cloud's ack.
uploader_actor spawn_uploader(caf::actor_system& sys, cloud_api cloud, wire_dtype dtype,
                              std::chrono::milliseconds timeout);

} // namespace ceco
