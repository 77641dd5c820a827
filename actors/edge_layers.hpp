#pragma once

// Edge layers: layers [0, split) of the model on the edge, with one KV cache
// per session. For a run of positions they answer the split layer's hidden
// states of every position and the exit layers' states of the last one.

#include <memory>
#include <vector>

#include "actors/messages.hpp"

namespace ceco {

class transformer;
struct compute_profile;

/// Exit layers may be empty (naive split needs none); each must be <= split.
edge_layers_actor spawn_edge_layers(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int split,
                                    std::vector<int> exits,
                                    std::shared_ptr<const compute_profile> profile = nullptr);

} // namespace ceco
