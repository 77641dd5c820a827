#pragma once

// The edge session driver: the token loop of one response under one
// strategy, from the prompt to the last token, over the edge actors and the
// cloud (docs/design.md §1-2):
//
//   cloud          open ─▶ generate_request(prompt) ─▶ close
//   naive          edge layers ─▶ naive_request(all split states, f32) ─▶ token ... (no exits)
//   standalone     edge layers ─▶ exit evaluator ─▶ token (the deepest exit when none fires)
//   collaborative  edge layers ─▶ uploader (async) ─▶ exit evaluator ─▶ token if an exit
//                  fires, else infer_request(pos) ─▶ cloud token
//   speculative    edge layers ─▶ exit evaluator ─▶ token (a confident exit's is final, an
//                  uncertain one is a draft) ─▶ draft_upload (async, the draft rides on its
//                  row) ─▶ next token at once; a verdict confirms the draft, or corrects it
//                  and the edge rolls back to it: collaborative's tokens without its stalls
//   exact          the same, but every token is a draft: the cloud strategy's tokens
//
// Speculative and exact wait only when policy.max_draft tokens are not yet
// final, and at the end for the last verdicts. Every draft upload carries
// the session's epoch (rollbacks so far); verdicts and edge results of an
// older epoch are dropped.
//
// The session moves through explicit phases, only along these edges
// (transition() refuses any other, and the report lists the phases taken):
//
//   idle ─run─▶ opening ─open─▶ running ─finish─▶ closing ─▶ reporting
//    │             │  │  cloud lost │  ▲             ▲  ▲      (uploads settle,
//    │ standalone  │  │             ▼  │ open        │  │       close, byte counts)
//    └─────────────┼──┼───▶ running  degraded ─link back─▶ resuming
//                  │  │               ▲  │  ▲                 │  │
//                  │  └─unreachable───┘  │  └───open failed───┘  │
//                  └─cancel, failure─────┴─────finish────────────┴──▶ closing
//
//   idle       spawned, not yet run
//   opening    asking the link's epoch and opening the cloud session
//   running    the token loop of the strategy
//   degraded   collaborative, speculative or exact with the cloud lost: the
//              token loop on the edge alone; speculative and exact hold their
//              drafts unverified until the link is back or
//              policy.cloud_loss_wait_ms passes (docs/design.md §7)
//   resuming   the link is back: opening a new cloud session, re-uploading
//   closing    finished; waits for uploads and opens in flight
//   reporting  closing the cloud session, collecting byte counts, delivering
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
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "actors/messages.hpp"
#include "config/strategy.hpp"

namespace ceco {

class edge_step_stops;

struct edge_site {
  edge_layers_actor layers;
  exit_evaluator_actor evaluator;        // may be a stand-in for one on the cloud
  exit_evaluator_actor local_evaluator;  // on the edge: standalone, and after losing the cloud
  uploader_actor uploader;
  cloud_api cloud;  // a link in a simulation, the remote front in a deployment
  link_actor link;  // where traffic is counted; may be invalid (no counts)
  std::shared_ptr<edge_step_stops> stops;  // the edge layers' (may be null)
};

/// Where a session is; see the diagram above.
enum class phase { idle, opening, running, degraded, resuming, closing, reporting };
const char* to_string(phase p);
/// Whether the diagram has the edge from -> to (from != to).
bool phase_transition_allowed(phase from, phase to);

/// What a response does when the cloud is lost (policy.on_cloud_loss).
enum class cloud_loss {
  wait,     // speculative, exact: hold the drafts and wait for the cloud; others: fail
  degrade,  // go on alone (speculative, exact: after waiting cloud_loss_wait)
  fail,     // end the response with an error
};

struct edge_session_options {
  strategy mode = strategy::collaborative;
  std::vector<int32_t> prompt;
  int max_tokens = 64;
  int32_t eos = 2;
  int max_seq = 0;            // the model's context
  std::vector<int> exits;     // exit layers, ascending
  bool sync_upload = false;   // collaborative: wait for each upload's ack before going on
  int max_draft = 16;         // speculative, exact: most tokens not yet final
  cloud_loss on_cloud_loss = cloud_loss::degrade;
  std::chrono::milliseconds cloud_loss_wait{10'000};  // see cloud_loss
  std::chrono::milliseconds timeout{30'000};  // per cloud request
  // The dtype the edge layers emit split rows in: the uploader's, so it
  // converts nothing. Naive's rows are f32 whatever this says.
  wire_dtype split_dtype = wire_dtype::f32;
  // Collaborative, speculative, exact: the open carries the prompt's tokens
  // and the cloud computes their rows itself; the edge's uploads begin at
  // the prompt's last row, which the cloud already holds and drops, keeping
  // its draft (upload.prompt, docs/design.md §2).
  bool prompt_to_cloud = false;
  caf::actor token_sink;      // receives each token as it is emitted; may be invalid
  // How tokens are chosen where they are decided (sampling.*): the cloud
  // strategy's cloud and standalone's exits; greedy elsewhere.
  sampler_options sampling;
};

edge_session_actor spawn_edge_session(caf::actor_system& sys, edge_site site,
                                      edge_session_options opts);

} // namespace ceco
