#pragma once

// The cloud's context manager. Per edge session it keeps the uploaded
// split-layer states until the cloud layers have caught up on them, the
// session's cloud context (the cloud layers' KV cache), and the inference
// requests that wait for uploads still on their way.
//
//   upload ──▶ pending ──(catch-up, batched, one in flight)──▶ computed
//   infer_request(pos) ──▶ answered at once if pos < computed, else parked
//
// Catch-up runs eagerly as uploads arrive; uploads that arrive while one is
// being computed are merged into the next batch. Sessions never share state;
// a session is freed when the edge closes it or after `ttl` without traffic.
// Beyond `max_sessions` a new session is refused (session_limit).

#include <chrono>

#include "actors/messages.hpp"
#include "model/config.hpp"

namespace ceco {

struct context_manager_options {
  std::chrono::milliseconds ttl{60'000};
  int max_sessions = 256;
};

context_manager_actor spawn_context_manager(caf::actor_system& sys, cloud_layers_actor layers,
                                            model_config cfg, context_manager_options opts);

} // namespace ceco
