#pragma once

// The cloud front as an edge of a deployment sees it: a cloud_api actor that
// sends each request as a frame over a wire::client (net/transport.hpp) and
// answers it with the reply frame. Replies come back on the client's I/O
// thread and are handed to the actor as messages; no actor state is touched
// from that thread. With heartbeats, the actor pings the cloud every
// heartbeat_ms and gives up on a cloud that has not answered a ping within
// four of them (a hung cloud keeps its connection open). When the
// connection is lost the actor quits with cloud_unreachable, which is what
// the link watches for.

#include <string>

#include "actors/messages.hpp"
#include "net/transport.hpp"

namespace ceco {

/// Connects, authenticates, and passes the handshake with `hello` within
/// `timeout_ms`: the remote front, or why not (handshake_failed when the
/// cloud refused this edge or its secret, for good; handshake_timeout when
/// the connection, its authentication or the hello took too long, worth
/// another try; cloud_unreachable otherwise). A request the front cannot
/// encode fails alone (bad_request); the connection goes on.
/// Blocking; safe from any thread but a scheduler's.
caf::expected<cloud_api> connect_remote_front(caf::actor_system& sys, wire::client_options opts,
                                              const hello_msg& hello, int heartbeat_ms,
                                              int timeout_ms);

} // namespace ceco
