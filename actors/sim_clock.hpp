#pragma once

// The clock of the actors that make up a deployment: its times, the link's
// delays and the profile's costs are all read on it. It is the host's steady
// clock, unless an in-process simulation in profile mode runs on virtual time
// (compute.clock = "virtual"): then all actors run one message at a time on
// CAF's test coordinator, the host's own work takes no time at all, and time
// moves only to the next delay an actor waits for (a link's transfer, a
// profiled cost). Its results are the profile's formulas exactly, however
// fast or loaded the host, and a simulation of hours runs in the host time
// its real computation takes.
//
// On the host's clock a piece of profiled work can take longer than the
// profile's cost for it; its reply is then late. Such overruns are counted,
// and profile-mode results report them.

#include <chrono>
#include <cstdint>
#include <functional>

#include <caf/fwd.hpp>

namespace ceco {

struct sim_clock {
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<sim_clock>;
  static constexpr bool is_steady = true;

  static time_point now() noexcept;

  /// Reads time from the clock of `sys`, whose scheduler is CAF's test
  /// coordinator (configure_virtual_time); nullptr: back to the host's.
  /// The clock is the process's: while one simulation runs on virtual
  /// time, no other may run, on either clock.
  static void use_virtual_time(caf::actor_system* sys);
  static bool is_virtual() noexcept;

  /// A piece of profiled work whose host time exceeded the profile's cost
  /// by `by`.
  static void note_overrun(duration by) noexcept;
  struct overruns {
    int64_t count = 0;
    double worst_ms = 0;
  };
  /// Overruns noted since the last call, which clears them.
  static overruns take_overruns() noexcept;
};

/// Makes an actor system that `cfg` configures run on virtual time: one
/// thread, CAF's test coordinator, its manual clock.
void configure_virtual_time(caf::actor_system_config& cfg);

/// Virtual time: runs the actors of `sys`, moving time on to the next
/// delay whenever none has a message left, until `done` holds; model_error
/// naming `what` when nothing is left to run or wait for before then
/// (`what` = nullptr: runs the messages there are, waits for no delay). On
/// the host's clock the scheduler runs by itself and this returns at once.
void run_virtual_until(caf::actor_system& sys, const std::function<bool()>& done,
                       const char* what);

} // namespace ceco
