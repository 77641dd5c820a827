#pragma once

// The cloud's context manager. Per edge session it keeps the uploaded
// split-layer states until the cloud layers have caught up on them, the
// session's cloud context (the cloud layers' KV cache), and the inference
// requests that wait for uploads still on their way.
//
//   upload ──▶ pending ──(catch-up, batched, one in flight)──▶ computed
//   infer_request(pos) ──▶ answered at once if pos < computed, else parked
//
// Work runs eagerly as uploads and requests arrive, in steps: one step in
// flight at the cloud layers computes the catch-up and the answerable
// requests of every ready session (up to `batch_sessions`) together, and
// whatever arrives meanwhile goes into the next step. So at low load a step
// holds one session and adds no wait; under load steps grow and the
// weights are read once per step instead of once per session. Sessions
// never share state; a session is freed when the edge closes it or after
// `ttl` without traffic: every request naming it counts as traffic, and a
// naive or generate request it has at the cloud layers keeps it from expiring
// until answered (a generation may take longer than the TTL). A new session beyond `max_sessions`, or one whose
// context would take the memory held past `max_context_bytes`, is refused
// (session_limit): refusing keeps every running response intact, where
// evicting would break one.

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>

#include "actors/messages.hpp"
#include "model/config.hpp"

namespace ceco {

/// Told of every session that ends, closed or expired, from the context
/// manager's thread; set (and reset) later from any thread: the gateway
/// attaches to it to drop the session from its connection's count.
class session_end_hook {
public:
  void set(std::function<void(uint64_t)> fn) {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = std::move(fn);
  }
  void operator()(uint64_t session) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (fn_)
      fn_(session);
  }

private:
  std::mutex mutex_;
  std::function<void(uint64_t)> fn_;
};

struct context_manager_options {
  std::chrono::milliseconds ttl{60'000};
  int max_sessions = 256;
  int batch_sessions = 64;        // most sessions per cloud step
  int64_t max_context_bytes = 0;  // 0 = no limit
  std::shared_ptr<session_end_hook> on_end;  // none: nobody is told
  exit_evaluator_actor evaluator;  // placed on the cloud: evaluations of a session go to it
};

context_manager_actor spawn_context_manager(caf::actor_system& sys, cloud_layers_actor layers,
                                            model_config cfg, context_manager_options opts);

} // namespace ceco
