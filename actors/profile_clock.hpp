#pragma once

// Profile mode's time for one actor (config/compute_profile.hpp): the pieces
// of work of one device run one after another, each taking the profile's cost
// from when it could start (its arrival, or the end of the device's piece
// before), and its reply is held until then. So queueing, overlap with the
// link and batching behave as on the profiled hardware, without a thread ever
// sleeping. A device is a key: the cloud is one, while each response of the
// simulation runs on an edge device of its own (the edge actors are shared,
// the simulated devices are not). In measured mode (no profile) replies go at
// once.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "actors/messages.hpp"
#include "actors/sim_clock.hpp"
#include "config/compute_profile.hpp"

namespace ceco {

/// When each device is next free. Actors that compute on one device share
/// one: the cloud's layers and an exit evaluator placed on the cloud queue
/// on the same GPU.
struct device_timeline {
  std::mutex mutex;
  std::unordered_map<uint64_t, sim_clock::time_point> busy_until;
};

class profile_clock {
public:
  using clock_type = sim_clock;

  profile_clock() : timeline_(std::make_shared<device_timeline>()) {
    // nop
  }
  /// `shared`: the timeline of devices other actors also compute on
  /// (nullptr: devices of this actor's own).
  explicit profile_clock(std::shared_ptr<const compute_profile> p,
                         std::shared_ptr<device_timeline> shared = nullptr)
      : profile_(std::move(p)),
        timeline_(shared ? std::move(shared) : std::make_shared<device_timeline>()) {
    // nop
  }

  /// The profile, or nullptr in measured mode.
  const compute_profile* profile() const { return profile_.get(); }

  /// Runs `deliver` when work of `cost_us` on `device` that arrived at
  /// `arrived` is done: at once if it already is, else on (deliver_atom, id)
  /// to `self`.
  template <class Self>
  void hold(Self* self, uint64_t device, clock_type::time_point arrived, int64_t cost_us,
            std::function<void()> deliver) {
    hold_in_pieces(self, device, arrived, cost_us, 1,
                   [deliver = std::move(deliver)](int64_t) { deliver(); });
  }

  /// The same for work of `pieces` equal parts that each run to their end
  /// once begun (a layer each), which stop() may end after the part in
  /// progress; `deliver` gets the microseconds the work took.
  template <class Self>
  void hold_in_pieces(Self* self, uint64_t device, clock_type::time_point arrived,
                      int64_t cost_us, int pieces, std::function<void(int64_t)> deliver) {
    held_work w;
    {
      std::lock_guard<std::mutex> lock(timeline_->mutex);
      auto& busy_until = timeline_->busy_until[device];
      w.begin = std::max(arrived, busy_until);
      busy_until = w.begin + std::chrono::microseconds(cost_us);
      w.done = busy_until;
    }
    const auto wait = w.done - clock_type::now();
    if (wait.count() <= 0) {
      // The host took longer than the profile allows: the reply is late.
      // More than 5% late, and more than scheduling noise.
      if (-wait > std::max<clock_type::duration>(std::chrono::microseconds(cost_us) / 20,
                                                 std::chrono::microseconds(100)))
        sim_clock::note_overrun(-wait);
      return deliver(cost_us);
    }
    w.deliver = std::move(deliver);
    w.device = device;
    w.cost_us = cost_us;
    w.piece_us = pieces > 1 ? cost_us / pieces : 0;
    const uint64_t id = next_++;
    held_.emplace(id, std::move(w));
    self->delayed_send(self, wait, deliver_atom::value, id);
  }

  /// Ends the work held in pieces on `device` after its part in progress
  /// (a rollback made it useless): its reply goes then, with the time of
  /// the parts begun, and the device is free from then on.
  template <class Self>
  void stop(Self* self, uint64_t device) {
    const auto now = clock_type::now();
    for (auto it = held_.begin(); it != held_.end(); ++it) {
      auto& w = it->second;
      if (w.device != device || w.piece_us <= 0 || now >= w.done)
        continue;
      const auto piece = std::chrono::microseconds(w.piece_us);
      const auto begun = now <= w.begin ? 0 : (now - w.begin + piece - std::chrono::nanoseconds(1)) / piece;
      const auto cut = w.begin + begun * piece;
      if (cut >= w.done)
        return;
      {
        std::lock_guard<std::mutex> lock(timeline_->mutex);
        auto& busy_until = timeline_->busy_until[device];
        if (busy_until == w.done)  // nothing queued behind it on the device
          busy_until = cut;
      }
      held_work cut_work = std::move(w);
      held_.erase(it);
      cut_work.cost_us = int64_t(begun) * cut_work.piece_us;
      cut_work.done = cut;
      cut_work.piece_us = 0;
      // The earlier (deliver_atom, id) finds nothing and changes nothing.
      const uint64_t id = next_++;
      held_.emplace(id, std::move(cut_work));
      if (cut <= now)
        return release(id);
      self->delayed_send(self, cut - now, deliver_atom::value, id);
      return;
    }
  }

  /// A device's queue is no longer needed (its response ended).
  void forget(uint64_t device) {
    std::lock_guard<std::mutex> lock(timeline_->mutex);
    timeline_->busy_until.erase(device);
  }

  /// The (deliver_atom, id) handler: runs what `hold` kept.
  void release(uint64_t id) {
    auto it = held_.find(id);
    if (it == held_.end())
      return;  // not ours (or a stopped piece's first timer): changes nothing
    auto w = std::move(it->second);
    held_.erase(it);
    w.deliver(w.cost_us);
  }

private:
  struct held_work {
    std::function<void(int64_t)> deliver;
    uint64_t device = 0;
    clock_type::time_point begin;
    clock_type::time_point done;
    int64_t cost_us = 0;
    int64_t piece_us = 0;  // 0: runs to its end
  };

  std::shared_ptr<const compute_profile> profile_;
  std::shared_ptr<device_timeline> timeline_;
  std::unordered_map<uint64_t, held_work> held_;
  uint64_t next_ = 0;
};

} // namespace ceco
