#pragma once

// The uploader: sends split-layer states to the cloud in the configured wire
// dtype (upload.dtype) and answers once the cloud acknowledged them. It runs
// on the edge or, with placement.uploader = "cloud", on the cloud; the edge
// then talks to it through a stand-in.

#include <chrono>

#include "actors/messages.hpp"

namespace ceco {

/// Sends uploads to `cloud` (a link or front on the edge, the context
/// manager when placed on the cloud); `timeout` bounds how long an upload
/// may wait for the ack.
uploader_actor spawn_uploader(caf::actor_system& sys, upload_sink cloud, wire_dtype dtype,
                              std::chrono::milliseconds timeout);

/// Edge-side stand-in for an uploader placed on the cloud: passes each
/// request through `cloud` (the link), so its bytes count like any other
/// cloud traffic.
uploader_actor spawn_remote_uploader(caf::actor_system& sys, cloud_api cloud);

} // namespace ceco
