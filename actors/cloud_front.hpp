#pragma once

// The cloud front: what the cloud exposes, one cloud_api handle that checks
// an edge's hello, sends session traffic to the context manager (naive and
// generate requests too: it checks their session and keeps it alive while
// the cloud layers compute them), and exit evaluations and
// uploads to the evaluator and uploader when they are placed on the cloud.
// A deployment serves it through the gateway (actors/gateway.hpp, `ceco
// cloud`), which lets a connection past hello only once the front accepted
// it; a simulation puts a link in front of it in the same process. Only
// this process and nodes that passed the handshake are served; anything
// outside the protocol gets an error.

#include "actors/messages.hpp"

namespace ceco {

/// The movable actors placed on the cloud (invalid handles: on the edge).
struct cloud_placed {
  exit_evaluator_actor evaluator;
  uploader_actor uploader;
};

/// `hello` is what the cloud serves: an edge's hello must agree with it.
cloud_api spawn_cloud_front(caf::actor_system& sys, context_manager_actor contexts,
                            cloud_placed placed, hello_msg hello);

} // namespace ceco
