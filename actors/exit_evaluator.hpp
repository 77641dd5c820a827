#pragma once

// The exit evaluator: the exit heads over the exit layers' states of one
// position, their confidence, and the threshold decision. It runs on the edge
// or, with placement.exit_evaluator = "cloud", on the cloud; the edge then
// talks to it through a stand-in.

#include <memory>
#include <optional>

#include "actors/messages.hpp"

namespace ceco {

class exit_heads;
struct compute_profile;
struct device_timeline;

struct exit_policy {
  /// θ of every exit (policy.threshold); unset: the heads' calibrated
  /// thresholds, else 0.8 (exit_heads::thresholds).
  std::optional<float> threshold;
  int min_exit_layer = 1;
  /// Sampled drafts come from the exit's distribution cut to this many
  /// likeliest tokens, which go up with the draft (policy.draft_candidates;
  /// 0: none, the draft verified as a point mass).
  int draft_candidates = 16;
};

/// With a profile (compute.mode = "profile") each evaluation takes the
/// profile's head cost of the side it runs on: on the edge, the device of
/// the response; `on_cloud`, device 0 of `cloud_device`, in turn with the
/// cloud layers' work.
exit_evaluator_actor spawn_exit_evaluator(caf::actor_system& sys, const exit_heads& heads,
                                          int n_embd, exit_policy policy,
                                          std::shared_ptr<const compute_profile> profile = nullptr,
                                          bool on_cloud = false,
                                          std::shared_ptr<device_timeline> cloud_device = nullptr);

/// Edge-side stand-in for an exit evaluator placed on the cloud: passes each
/// request through `cloud` (the link), so its bytes and delays count like any
/// other cloud traffic.
exit_evaluator_actor spawn_remote_evaluator(caf::actor_system& sys, cloud_api cloud);

} // namespace ceco
