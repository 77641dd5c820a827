#include "actors/site_watch.hpp"

#include <unordered_map>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/messages.hpp"

namespace ceco {

namespace {

using watch_atom = caf::atom_constant<caf::atom("watch")>;

struct watcher_state {
  std::unordered_map<caf::actor_addr, std::string> names;
  static inline const char* name = "site watch";
};

} // namespace

site_watch::site_watch(caf::actor_system& sys) : state_(std::make_shared<state>()) {
  auto shared = state_;
  watcher_ = std::make_unique<caf::actor>(sys.spawn(
    [shared](caf::stateful_actor<watcher_state>* self) -> caf::behavior {
      self->set_down_handler([self, shared](caf::down_msg& down) {
        auto it = self->state.names.find(down.source);
        const std::string who = it == self->state.names.end() ? "an unnamed" : it->second;
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (shared->stopped || shared->failure)
          return;
        shared->failure = fmt::format("the {} actor went down: {}", who, describe(down.reason));
        shared->changed.notify_all();
      });
      return {
        [self](watch_atom, caf::actor& watched, std::string& name) {
          self->state.names.emplace(watched.address(), std::move(name));
          self->monitor(watched);
        },
      };
    }));
}

site_watch::~site_watch() { stop(); }

void site_watch::add(const caf::actor& actor, std::string name) {
  if (actor)
    caf::anon_send(*watcher_, watch_atom::value, actor, std::move(name));
}

std::optional<std::string> site_watch::failure(std::chrono::milliseconds wait) const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->changed.wait_for(lock, wait, [&] { return bool(state_->failure); });
  return state_->failure;
}

void site_watch::stop() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->stopped)
      return;
    state_->stopped = true;
  }
  caf::anon_send_exit(*watcher_, caf::exit_reason::user_shutdown);
}

} // namespace ceco
