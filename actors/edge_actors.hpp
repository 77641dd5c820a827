#pragma once

// The edge site's actors: edge layers (layers [0, split) with a KV cache per
// session), the exit evaluator (heads, confidence, threshold) and the
// uploader (split-layer states to the cloud, in the configured dtype). The
// evaluator and the uploader may be placed on the cloud instead
// (placement.*); the edge then talks to them through stand-ins.

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

/// Sends uploads to `cloud` (a link or front on the edge, the context
/// manager when placed on the cloud); `timeout` bounds how long an upload
/// may wait for the ack.
uploader_actor spawn_uploader(caf::actor_system& sys, upload_sink cloud, wire_dtype dtype,
                              std::chrono::milliseconds timeout);

/// Edge-side stand-ins for an exit evaluator or uploader placed on the
/// cloud: they pass each request through `cloud` (the link), so its bytes
/// and delays count like any other cloud traffic.
exit_evaluator_actor spawn_remote_evaluator(caf::actor_system& sys, cloud_api cloud);
uploader_actor spawn_remote_uploader(caf::actor_system& sys, cloud_api cloud);

} // namespace ceco
