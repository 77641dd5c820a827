#pragma once

// The edge session driver: the token loop of one response under one
// strategy, from the prompt to the last token, over the edge actors and the
// cloud (design notes §1-2):
//
//   cloud          open ─▶ generate_request(prompt) ─▶ close
//   naive          edge layers ─▶ naive_request(all split states, f32) ─▶ token ... (no exits)
//   standalone     edge layers ─▶ exit evaluator ─▶ token (the deepest exit when none fires)
//   collaborative  edge layers ─▶ uploader (async) ─▶ exit evaluator ─▶ token if an exit
//                  fires, else infer_request(pos) ─▶ cloud token
//
// The session moves through explicit phases:
//
//   idle ─run─▶ opening ─▶ running ──────────────────────────▶ closing ─▶ reporting
//                  │          │ cloud lost            ▲            (uploads settle,
//                  │          ▼                       │             close, byte counts)
//                  └──────▶ degraded ─link back─▶ resuming
//                              ▲                     │ open failed
//                              └─────────────────────┘
//
// Every step is a continuation (request().then), so the driver never blocks
// a scheduler thread.
//
// Each token, as it is emitted, also goes to `token_sink` when one is set, as
// (token_atom, token, exit layer or -1 for the cloud, the cloud request's
// round trip in microseconds or -1): how `ceco serve` streams a response.
// (cancel_atom) finishes the response at once; its cloud session is closed
// as at any end (an open still in flight is closed when it answers).

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "actors/messages.hpp"

namespace ceco {

struct edge_site {
  edge_layers_actor layers;
  exit_evaluator_actor evaluator;        // may be a stand-in for one on the cloud
  exit_evaluator_actor local_evaluator;  // on the edge: standalone, and after losing the cloud
  uploader_actor uploader;
  cloud_api cloud;  // a link in a simulation, the remote front in a deployment
  link_actor link;  // where traffic is counted; may be invalid (no counts)
};

/// The strategy of a response; settings name it (policy.mode), the session
/// driver works with the enum.
enum class strategy { cloud, naive, standalone, collaborative };

/// "cloud", "naive", "standalone" or "collaborative"; nullopt for anything else.
std::optional<strategy> parse_strategy(std::string_view name);
const char* to_string(strategy s);

struct edge_session_options {
  strategy mode = strategy::collaborative;
  std::vector<int32_t> prompt;
  int max_tokens = 64;
  int32_t eos = 2;
  int max_seq = 0;            // the model's context
  std::vector<int> exits;     // exit layers, ascending
  bool sync_upload = false;   // wait for each upload's ack before going on
  std::chrono::milliseconds timeout{30'000};  // per cloud request
  caf::actor token_sink;      // receives each token as it is emitted; may be invalid
};

edge_session_actor spawn_edge_session(caf::actor_system& sys, edge_site site,
                                      edge_session_options opts);

} // namespace ceco
