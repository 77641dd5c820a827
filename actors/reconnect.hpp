#pragma once

// Reconnecting to a cloud: the one backoff policy (the first connection of
// `ceco edge` and the link's reconnection after a loss both follow it) and
// the reconnector, which tries from a thread of its own so that no actor
// blocks on a connection.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

#include "actors/messages.hpp"

namespace ceco {

/// Doubling waits between connection attempts: first, 2 first, 4 first, ...
/// up to cap.
struct backoff {
  std::chrono::milliseconds first{100};
  std::chrono::milliseconds cap{2000};

  /// The wait after the attempt `n` (from 0) failed.
  std::chrono::milliseconds after(int n) const;
  /// The waits after `attempts` failed attempts, added up: as long as that
  /// many attempts may take beyond their own time.
  std::chrono::milliseconds total(int attempts) const;
};

using connect_fn = std::function<caf::expected<cloud_api>()>;

/// Calls `connect` from a thread of its own, at once and then after each
/// backoff, until it gives a cloud front, which it hands to `reconnected`
/// (from that thread). Stops trying when the reconnector goes.
class reconnector {
public:
  reconnector() = default;
  reconnector(const reconnector&) = delete;
  reconnector& operator=(const reconnector&) = delete;
  ~reconnector() { *stop_ = true; }

  bool running() const { return running_; }
  void start(caf::actor_system& sys, connect_fn connect,
             std::function<void(cloud_api)> reconnected, backoff policy = {});
  /// The front was handed over: a later loss may start it again.
  void done() { running_ = false; }

private:
  std::shared_ptr<std::atomic<bool>> stop_ = std::make_shared<std::atomic<bool>>(false);
  bool running_ = false;
};

} // namespace ceco
