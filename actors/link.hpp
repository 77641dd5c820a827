#pragma once

// The simulated network between the edges and the cloud. Every cloud_api
// message crosses it in both directions: each session is an edge with a
// pipe of its own, each direction of it FIFO with `bandwidth_mbps` (0 =
// unlimited), whose messages also take `latency_ms` plus a uniform jitter in
// [0, jitter_ms). A message's size is its CAF
// binary serialisation in a simulation, the size of the frame that carries
// it (net/frame.hpp) to a remote cloud, counted per session (the session a
// message names; an open counts for the session it returns).
//
// The link runs on the edge: in a simulation in front of the cloud front in
// the same process, in a deployment (with no added delay) in front of the
// remote front, to count bytes and to fail requests when the cloud is lost.

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
  /// Profile mode: hidden states take as long to send as at the profiled
  /// model's width (target dim / n_embd times their bytes); the bytes
  /// counted stay this model's. 1 = as they are.
  double hidden_scale = 1.0;
  /// The cloud is a remote front (actors/remote_front.hpp): count wire
  /// frames, and end the front when the link ends.
  bool remote = false;
  /// Connects to the cloud again (blocking: connection and handshake), for
  /// a link to a remote cloud. When the cloud is lost the link calls it from
  /// a thread of its own, at once and then with the reconnect backoff
  /// (actors/reconnect.hpp) until it succeeds; empty = the link stays down.
  std::function<caf::expected<cloud_api>()> reconnect;
};

link_actor spawn_link(caf::actor_system& sys, cloud_api cloud, link_options opts);

} // namespace ceco
