#pragma once

// A gateway's context manager (docs/cluster.md). It holds no session state
// of its own: each new session goes to one worker (a context manager with
// its cloud layers, in another process reached through CAF's network layer,
// or in this one), and every later message of that session is forwarded
// there, its session id translated both ways.
//
//   edge ─▶ gateway: cloud front ─▶ session router ─┬─▶ worker 1: context manager ─▶ cloud layers
//                                                   └─▶ worker 2: context manager ─▶ cloud layers
//
// Placement: the worker that is up with the fewest open sessions placed by
// this router (ties: the first listed); a worker that refuses (its
// session.max_sessions or session.max_memory_mb) is skipped for the next, and
// only when every worker refuses is the open refused (session_limit). A
// session stays where it was placed.
//
// A worker that goes down (its process dies, or the connection to it is cut
// and CAF's heartbeats time out) loses its sessions: every request waiting on
// it, and every later message naming one of them, is answered session_lost,
// and the edge opens a new session elsewhere and uploads its context again
// (the resume path of docs/design.md §7). A worker joins, or rejoins under its
// name, with (join_atom, name, handle) at any time; an invalid handle lists a
// worker that is not up (yet), so that the status shows it down.

#include <functional>
#include <memory>
#include <string>

#include "actors/context_manager.hpp"
#include "actors/messages.hpp"

namespace ceco {

struct session_router_options {
  std::shared_ptr<session_end_hook> on_end;  // told of every session that ends here
  size_t remembered_lost = 65536;            // lost session ids kept to answer session_lost
  /// Told when a worker goes down: its name, why, and how many sessions it took.
  std::function<void(const std::string&, const std::string&, int64_t)> on_worker_down;
};

session_router_actor spawn_session_router(caf::actor_system& sys, session_router_options opts);

} // namespace ceco
