#pragma once

// Watching the actors a process cannot live without. An actor of the cloud
// should never die (a handler's exception is an error reply), but if one does
// anyway the process must not go on answering every request with an error:
// the watch records the first actor that went down, with its name and
// reason, and `ceco cloud` exits non-zero on it so that its supervisor
// (systemd) restarts it. Actors stopped by stop() are not failures.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <caf/fwd.hpp>

namespace ceco {

class site_watch {
public:
  explicit site_watch(caf::actor_system& sys);
  ~site_watch();
  site_watch(const site_watch&) = delete;
  site_watch& operator=(const site_watch&) = delete;

  /// Watches `actor` under `name` ("cloud layers"); one already dead is
  /// reported at once.
  void add(const caf::actor& actor, std::string name);
  /// "the cloud layers actor went down: <reason>" for the first watched actor
  /// that went down before stop(), waiting up to `wait` for one; none while
  /// every one lives.
  std::optional<std::string> failure(std::chrono::milliseconds wait = {}) const;
  /// Ends the watch: what goes down after it is a shutdown, not a failure.
  void stop();

private:
  struct state {
    std::mutex mutex;
    std::condition_variable changed;
    bool stopped = false;
    std::optional<std::string> failure;
  };
  std::shared_ptr<state> state_;
  std::unique_ptr<caf::actor> watcher_;
};

} // namespace ceco
