#pragma once

#include <memory>

#include "actors/messages.hpp"

namespace ceco {

class transformer;
struct compute_profile;
struct device_timeline;

/// Bytes a context holds (KV cache and final hidden states).
int64_t cloud_context_bytes(const cloud_context& ctx);

/// Forgets positions >= `positions` (a rollback): the next catch-up starts
/// there. Only while no step of the context is in flight.
void rewind(cloud_context& ctx, int32_t positions);

/// Positions [0, computed) of a context.
int32_t computed_positions(const cloud_context& ctx);

/// The cloud's compute: layers [split, L) for collaborative and naive
/// requests, the whole model for the cloud strategy. Stops generating at
/// `eos`, and holds at most `max_generations` cloud-strategy generations at
/// once (each has a KV cache; more are refused). With a profile, each piece
/// of work takes the profile's cloud cost, on device 0 of `cloud_device`
/// (nullptr: a device of its own). With a `stage` (placement.cloud_stages)
/// the layers of collaborative and naive requests end at `stage_from`, and
/// the stage runs the rest and chooses their tokens (actors/layer_stage.hpp);
/// the cloud strategy still runs the whole model here.
cloud_layers_actor spawn_cloud_layers(caf::actor_system& sys,
                                      std::shared_ptr<const transformer> model, int split,
                                      int32_t eos, int max_generations,
                                      std::shared_ptr<const compute_profile> profile = nullptr,
                                      std::shared_ptr<device_timeline> cloud_device = nullptr,
                                      layer_stage_actor stage = {}, int stage_from = 0);

} // namespace ceco
