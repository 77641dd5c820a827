#pragma once

// The simulated network between an edge and the cloud. Every cloud_api
// message crosses it in both directions: each direction is a FIFO pipe of
// `bandwidth_mbps` (0 = unlimited) whose messages also take `latency_ms`
// plus a uniform jitter in [0, jitter_ms). A message's size is its CAF
// binary serialisation, counted per session (the session a message names;
// an open counts for the session it returns).
//
// The cloud front is what the cloud exposes: one cloud_api handle that checks
// an edge's hello, sends session traffic to the context manager, stateless
// requests (naive, generate) to the cloud layers, and exit evaluations and
// uploads to the evaluator and uploader when they are placed on the cloud. A deployment publishes it
// (and the edge puts a link with no added delay in front of the remote
// handle, to count bytes and to fail requests when the cloud is lost); a
// simulation puts a link in front of it in the same process.

#include <chrono>
#include <cstdint>
#include <functional>

#include "actors/messages.hpp"

namespace ceco {

struct link_options {
  double latency_ms = 0.0;
  double bandwidth_mbps = 0.0;  // 0 = unlimited
  double jitter_ms = 0.0;
  uint64_t seed = 1;
  /// Connects to the cloud again (blocking: connection and handshake), for
  /// a link to a remote cloud. When the cloud is lost the link calls it from
  /// a thread of its own, at once and then with doubling backoff (100 ms to
  /// 2 s) until it succeeds; empty = the link stays down.
  std::function<caf::expected<cloud_api>()> reconnect;
};

link_actor spawn_link(caf::actor_system& sys, cloud_api cloud, link_options opts);

/// The movable actors placed on the cloud (invalid handles: on the edge).
struct cloud_placed {
  exit_evaluator_actor evaluator;
  uploader_actor uploader;
};

/// `hello` is what the cloud serves: an edge's hello must agree with it.
cloud_api spawn_cloud_front(caf::actor_system& sys, context_manager_actor contexts,
                            cloud_layers_actor layers, cloud_placed placed, hello_msg hello);

} // namespace ceco
