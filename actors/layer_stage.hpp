#pragma once

// A layer stage: a range of the cloud's layers as an actor of its own, in
// the cloud's process or on another cluster node (placement.cloud_stages,
// docs/cluster.md "Layer stages"). The cloud layers run [split, first
// boundary) and hand each step's rows to the first stage; each stage runs
// its range for every session of the step in one multi-sequence pass, with
// a KV cache per session, and hands the rows on; the last runs the final
// norm and classifier and makes the cloud's choice of each token. A step
// stays one batch across the nodes; the tokens are the one-process ones.

#include <cstdint>
#include <memory>
#include <string>

#include "actors/messages.hpp"
#include "config/settings.hpp"

namespace ceco {

class transformer;

/// Layers [first, last) of `model`; `next` takes the rows on after them,
/// or, when none is given, this stage is the last (`last` must then be the
/// model's n_layer) and answers the tokens. `fingerprint` is the model's,
/// for the hello of a node that sends work from elsewhere.
layer_stage_actor spawn_layer_stage(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int first,
                                    int last, layer_stage_actor next, uint64_t fingerprint);

/// A stage's reply to a step of `sent` work items, one done per item: as
/// it came, or, from a stage that could not be reached (`reply` an error)
/// or answered another number of items, every item failed (session_lost:
/// their edges open new sessions and upload again).
std::vector<stage_work_done> stage_results(caf::expected<stage_step_done>& reply, size_t sent,
                                           int64_t& compute_us);

/// Each range of the cloud's part after its first one, by placement: the
/// stages of `s.placement.cloud_stages` from index `from` on, spawned here
/// or, for a boundary with an address in cluster.stage_hosts, reached on
/// that node (its hello checked). The first of them; none when `from` is
/// past the last boundary. Throws config_error naming the address of a
/// stage that cannot be reached or refuses.
layer_stage_actor stage_chain(caf::actor_system& sys, const settings& s,
                              std::shared_ptr<const transformer> model, uint64_t fingerprint,
                              size_t from);

/// Serves stage cluster.stage of placement.cloud_stages on cluster.host:
/// cluster.port (the cluster's TLS unless cluster.insecure), its next
/// stages as placed; the port bound. `stop_layer_stage` takes it off.
uint16_t publish_layer_stage(caf::actor_system& sys, const settings& s,
                             const layer_stage_actor& stage);
void stop_layer_stage(caf::actor_system& sys, const settings& s, const layer_stage_actor& stage,
                      uint16_t port);

} // namespace ceco
