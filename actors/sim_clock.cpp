#include "actors/sim_clock.hpp"

#include <atomic>
#include <functional>

#include <fmt/format.h>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/detail/test_actor_clock.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include "model/config.hpp"

namespace ceco {

namespace {

// The virtual clock in use, or nullptr for the host's. Set while no actor
// of the simulation runs; a virtual simulation runs on one thread.
std::atomic<const caf::detail::test_actor_clock*> virtual_clock{nullptr};
std::atomic<int64_t> overrun_count{0};
std::atomic<int64_t> worst_overrun_ns{0};

caf::scheduler::test_coordinator* test_coordinator_of(caf::actor_system& sys) {
  return dynamic_cast<caf::scheduler::test_coordinator*>(&sys.scheduler());
}

} // namespace

sim_clock::time_point sim_clock::now() noexcept {
  if (const auto* c = virtual_clock.load(std::memory_order_relaxed))
    return time_point(c->now().time_since_epoch());
  return time_point(std::chrono::steady_clock::now().time_since_epoch());
}

void sim_clock::use_virtual_time(caf::actor_system* sys) {
  if (!sys) {
    virtual_clock.store(nullptr);
    return;
  }
  auto* sched = test_coordinator_of(*sys);
  if (!sched)
    throw std::logic_error("sim_clock: virtual time needs an actor system made with "
                           "configure_virtual_time");
  const caf::detail::test_actor_clock* none = nullptr;
  if (!virtual_clock.compare_exchange_strong(none, &sched->clock()))
    throw std::logic_error("sim_clock: one simulation on virtual time per process at a time");
}

bool sim_clock::is_virtual() noexcept { return virtual_clock.load() != nullptr; }

void sim_clock::note_overrun(duration by) noexcept {
  overrun_count.fetch_add(1, std::memory_order_relaxed);
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(by).count();
  int64_t worst = worst_overrun_ns.load(std::memory_order_relaxed);
  while (ns > worst && !worst_overrun_ns.compare_exchange_weak(worst, ns)) {
  }
}

sim_clock::overruns sim_clock::take_overruns() noexcept {
  overruns o;
  o.count = overrun_count.exchange(0);
  o.worst_ms = double(worst_overrun_ns.exchange(0)) / 1e6;
  return o;
}

void configure_virtual_time(caf::actor_system_config& cfg) {
  cfg.set("scheduler.policy", caf::atom("testing"));
}

void run_virtual_until(caf::actor_system& sys, const std::function<bool()>& done,
                       const char* what) {
  auto* sched = test_coordinator_of(sys);
  if (!sched)
    return;
  // Periodic timers (the context manager's sweep) never run out: a bound on
  // the time waited keeps a response that cannot finish from spinning.
  const auto give_up = sched->clock().now() + std::chrono::hours(24 * 7);
  while (!done()) {
    if (sched->run() > 0)
      continue;
    if (!what)
      return;  // only the work there is, no waiting
    if (!sched->trigger_timeout())
      throw model_error(fmt::format("virtual time: no actor has work left and none waits for a "
                                    "delay, but {} has not finished",
                                    what));
    if (sched->clock().now() > give_up)
      throw model_error(fmt::format("virtual time: a week passed and {} has not finished", what));
  }
}

} // namespace ceco
