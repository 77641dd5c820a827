#pragma once

// Profile mode's time for one actor (config/compute_profile.hpp): its pieces
// of work run one after another, each taking the profile's cost from when it
// could start (its arrival, or the end of the piece before), and its reply is
// held until then. So queueing, overlap with the link and batching behave as
// on the profiled hardware, without a thread ever sleeping. In measured mode
// (no profile) replies go at once.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>

#include "actors/messages.hpp"
#include "config/compute_profile.hpp"

namespace ceco {

class profile_clock {
public:
  using clock_type = std::chrono::steady_clock;

  profile_clock() = default;
  explicit profile_clock(std::shared_ptr<const compute_profile> p) : profile_(std::move(p)) {
    // nop
  }

  /// The profile, or nullptr in measured mode.
  const compute_profile* profile() const { return profile_.get(); }

  /// Runs `deliver` when work of `cost_us` that arrived at `arrived` is done:
  /// at once if it already is, else on (deliver_atom, id) to `self`.
  template <class Self>
  void hold(Self* self, clock_type::time_point arrived, int64_t cost_us,
            std::function<void()> deliver) {
    const auto start = std::max(arrived, busy_until_);
    busy_until_ = start + std::chrono::microseconds(cost_us);
    const auto wait = std::chrono::duration_cast<std::chrono::microseconds>(busy_until_
                                                                           - clock_type::now());
    if (wait.count() <= 0)
      return deliver();
    const uint64_t id = next_++;
    held_.emplace(id, std::move(deliver));
    self->delayed_send(self, wait, deliver_atom::value, id);
  }

  /// The (deliver_atom, id) handler: runs what `hold` kept.
  void release(uint64_t id) {
    auto it = held_.find(id);
    if (it == held_.end())
      return;  // not ours: a stray message changes nothing
    auto deliver = std::move(it->second);
    held_.erase(it);
    deliver();
  }

private:
  std::shared_ptr<const compute_profile> profile_;
  clock_type::time_point busy_until_{};
  std::unordered_map<uint64_t, std::function<void()>> held_;
  uint64_t next_ = 0;
};

} // namespace ceco
