#pragma once

// Wiring of the edge and cloud sites, for every command. The cloud site is
// the cloud layers, the context manager and the front; the edge site is the
// edge layers, the exit evaluator, the uploader and a link to the cloud.
// `ceco sim` and the experiments hold both in one process; a two-node
// deployment runs the cloud site in `ceco cloud` and the edge site in
// `ceco edge`, whose link wraps the remote front. Every strategy runs over
// the same actors; only the session driver's strategy differs.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "actors/cloud_front.hpp"
#include "actors/link.hpp"
#include "actors/messages.hpp"
#include "actors/network.hpp"
#include "actors/site_watch.hpp"
#include "config/compute_profile.hpp"
#include "config/settings.hpp"
#include "model/exit_heads.hpp"
#include "model/tokenizer.hpp"

namespace ceco {

class edge_step_stops;

class transformer;

/// The model, its exit heads and tokenizer, loaded and checked once.
struct site_model {
  std::shared_ptr<const transformer> model;
  exit_heads heads;
  tokenizer vocab;
  std::string path;
  uint64_t fingerprint = 0;
  uint64_t shape_fingerprint = 0;  // shape and tokenizer (one model in any quantization)
  std::string weight_types;        // "Q4_K+Q6_K"
};

/// Loads what `s` names (model.path, model.exit_heads, model.exits) and
/// checks the settings against the model's shape; throws config_error or
/// model_error before anything starts. An empty model.path means
/// `default_model`, whose heads are `default_heads` unless model.exit_heads
/// names others ("none": untrained heads).
site_model load_site_model(const settings& s, const std::string& default_model,
                         const std::string& default_heads = {});

/// policy.threshold as the exit rule takes it: unset ("auto") leaves each
/// exit its calibrated threshold (exit_heads::thresholds).
std::optional<float> threshold_override(const settings& s);

/// The device profile compute.mode = "profile" names (nullptr when
/// measured); config_error when the mode asks for one and none is named.
std::shared_ptr<const compute_profile> compute_profile_of(const settings& s);
/// config_error when compute.clock = "virtual" outside an in-process
/// simulation (`in_process`: ceco sim, ceco experiment) in profile mode.
void check_clock(const settings& s, bool in_process);
/// The actor system of an in-process simulation: `threads` scheduler
/// threads, or virtual time (actors/sim_clock.hpp) when compute.clock asks.
void configure_simulation(caf::actor_system_config& cfg, const settings& s);
/// "measured", or "profile:<name>": what produced a result's times.
std::string compute_label(const settings& s);

/// The handshake this node sends (edge) or expects (cloud).
hello_msg make_hello(const settings& s, const site_model& m);

/// What a peer's frames are checked against: this node's model.
wire::wire_limits wire_limits_of(const site_model& m);

class session_end_hook;

struct cloud_site {
  cloud_layers_actor layers;      // none at a gateway
  layer_stage_actor stage;        // the first of placement.cloud_stages, if any
  context_manager_actor contexts; // at a gateway: its session router
  session_router_actor router;    // a gateway's (none elsewhere)
  std::vector<cloud_site> workers;  // in-process workers behind the router (cluster.local_workers)
  /// Told of every session the context manager ends (the gateway listens).
  std::shared_ptr<session_end_hook> session_ends;
  cloud_placed placed;  // the exit evaluator and uploader, when placed here
  cloud_api front;
  /// Each of the actors above, by name: the first to go down (other than
  /// by stop()) is the site's failure.
  std::shared_ptr<site_watch> watch;
  /// Stops the site's actors (the context manager's timer would keep it alive).
  void stop();
};

/// The cloud site of s.cluster.role: the context manager and cloud layers
/// (single, worker), or a session router in their place (gateway: its
/// workers join later, actors/cluster.hpp). With cluster.local_workers = N
/// in one process: a router in front of N whole sites, each its own device.
cloud_site spawn_cloud_site(caf::actor_system& sys, const settings& s, const site_model& m);

/// The edge site, and the cloud site unless the cloud is remote.
class deployment {
public:
  /// With `remote_cloud` set, the edge site talks to it (through a link that
  /// adds the configured delays, counts bytes and fails requests when the
  /// cloud is lost) and no cloud site is spawned here. `reconnect`, if set,
  /// is how the link connects again after a loss (see link_options).
  deployment(caf::actor_system& sys, const settings& s, const site_model& m,
             cloud_api remote_cloud = {},
             std::function<caf::expected<cloud_api>()> reconnect = {});
  ~deployment();
  deployment(const deployment&) = delete;
  deployment& operator=(const deployment&) = delete;

  /// Runs one response to completion. `mode` overrides policy.mode when set.
  response_report run(const std::vector<int32_t>& prompt, std::optional<strategy> mode = {},
                      int max_tokens = 0);
  /// The same with the strategy by its name (a config_error for an unknown one).
  response_report run(const std::vector<int32_t>& prompt, std::string_view mode,
                      int max_tokens = 0);
  /// Runs several responses at the same time on the same actors;
  /// `sampling`, when not empty, holds each one's (else sampling.*).
  std::vector<response_report> run_concurrently(const std::vector<std::vector<int32_t>>& prompts,
                                                std::optional<strategy> mode = {},
                                                int max_tokens = 0,
                                                const std::vector<sampler_options>& sampling = {});
  std::vector<response_report> run_concurrently(const std::vector<std::vector<int32_t>>& prompts,
                                                std::string_view mode, int max_tokens = 0);

  /// Waits up to `max_wait` for the link to the cloud to be up; false if it
  /// is still down then.
  bool wait_for_cloud(std::chrono::milliseconds max_wait);

  /// One response's session, spawned but not yet run (send it run_atom):
  /// `token_sink`, if valid, receives each token as it is emitted (see
  /// edge_session.hpp). Throws config_error for a mode the placement cannot
  /// run, an empty prompt or one that fills the model's context.
  /// `sampling` overrides the settings' sampling.* when set.
  edge_session_actor spawn_session(const std::vector<int32_t>& prompt,
                                   std::optional<strategy> mode = {}, int max_tokens = 0,
                                   caf::actor token_sink = {},
                                   std::optional<sampler_options> sampling = {});

  /// The link's epoch: how many times it reconnected, or -1 while the cloud
  /// is lost.
  int64_t link_epoch();

  context_manager_actor contexts() const { return cloud_.contexts; }
  cloud_layers_actor cloud_layers() const { return cloud_.layers; }
  /// Why the local cloud cannot serve any more (an actor of it died: see
  /// site_watch), waiting up to `wait`; none while it is whole or remote.
  std::optional<std::string> cloud_failure(std::chrono::milliseconds wait = {}) const;
  /// Sessions open, the bytes their contexts hold and the steps computed,
  /// at the context manager (a local cloud only).
  cloud_stats cloud_state();

private:
  caf::actor_system& sys_;
  settings settings_;
  const site_model& model_;
  cloud_site cloud_;  // empty with a remote cloud
  link_actor link_;
  edge_layers_actor edge_layers_;
  std::shared_ptr<edge_step_stops> edge_stops_;
  exit_evaluator_actor evaluator_;        // where placement.exit_evaluator says
  exit_evaluator_actor local_evaluator_;  // on the edge, always
  uploader_actor uploader_;
  uploader_actor exact_uploader_;  // exact's own, in its dtype (upload_dtype_of)
  bool virtual_time_ = false;  // this deployment set the process's clock
};

} // namespace ceco
