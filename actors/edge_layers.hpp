#pragma once

// Edge layers: layers [0, split) of the model on the edge, with one KV cache
// per session. For a run of positions they answer the split layer's hidden
// states of every position and the exit layers' states of the last one.

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "actors/messages.hpp"

namespace ceco {

class transformer;
struct compute_profile;

/// Lets a session stop its edge steps when a rollback made them useless
/// (speculative, exact). A session asks for each step with its ticket();
/// on a rollback it calls stop() and sends (cancel_atom, session) to the
/// edge layers. A step asked before the stop and computing on the host's
/// time ends before its next layer (or before its first, if it had not
/// begun); in profile mode the message ends the step's held time after the
/// layer in progress. Either way its reply carries no rows and the time of
/// the layers begun.
class edge_step_stops {
public:
  /// What a step of `session` asked now carries.
  uint64_t ticket(uint64_t session) const;
  /// Every step of `session` asked before now is to stop.
  void stop(uint64_t session);
  bool stopped(uint64_t session, uint64_t ticket) const;
  void forget(uint64_t session);

private:
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, uint64_t> stops_;
};

/// Exit layers may be empty (naive split needs none); each must be <= split.
edge_layers_actor spawn_edge_layers(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int split,
                                    std::vector<int> exits,
                                    std::shared_ptr<const compute_profile> profile = nullptr,
                                    std::shared_ptr<edge_step_stops> stops = nullptr);

} // namespace ceco
