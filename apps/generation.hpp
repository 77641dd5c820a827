#pragma once

// One response's edge session driven from a plain thread (an HTTP worker of
// `ceco serve`, the terminal loop of `ceco chat`): its tokens as they come,
// cancelling, its report.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/deployment.hpp"
#include "actors/edge_session.hpp"
#include "actors/messages.hpp"

namespace ceco::app {

/// One response's edge session, driven from the calling thread: a scoped
/// actor receives its tokens as the session emits them and, last, its report.
/// `ceco serve` runs one per completion, `ceco chat` one per reply.
class generation {
public:
  generation(caf::actor_system& sys, deployment& edge, const std::vector<int32_t>& prompt,
             strategy mode, int max_tokens, std::optional<sampler_options> sampling = {})
    : self_(sys) {
    session_ = edge.spawn_session(prompt, mode, max_tokens, caf::actor_cast<caf::actor>(self_),
                                  sampling);
    self_->monitor(session_);
    self_->send(session_, run_atom::value);
  }
  ~generation() {
    // Never leave a session running behind a request that is gone.
    if (!done_) {
      cancel();
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!done_ && std::chrono::steady_clock::now() < until)
        next(std::chrono::milliseconds(100));
    }
  }
  generation(const generation&) = delete;
  generation& operator=(const generation&) = delete;

  struct event {
    enum class kind { idle, token, done };
    kind what = kind::idle;
    int32_t token = 0;
    int32_t exit_layer = -1;  // -1: the cloud's
    int64_t rtt_us = -1;      // the cloud request's round trip, for a cloud token
  };

  /// The next token, the end, or nothing within `wait`.
  event next(std::chrono::milliseconds wait) {
    event e;
    if (done_) {
      e.what = event::kind::done;
      return e;
    }
    self_->receive(
      [&](token_atom, int32_t token, int32_t layer, int64_t rtt) {
        e = {event::kind::token, token, layer, rtt};
      },
      [&](response_report& r) {
        report_ = std::move(r);
        done_ = true;
        e.what = event::kind::done;
      },
      [&](caf::error& err) {
        report_.error = describe(err);
        done_ = true;
        e.what = event::kind::done;
      },
      [&](caf::down_msg& down) {
        // Only after the report, unless the session died without one.
        if (!done_)
          report_.error = "the edge session ended without a report: " + describe(down.reason);
        done_ = true;
        e.what = event::kind::done;
      },
      caf::after(wait) >> [] {});
    return e;
  }

  /// Ends the session early; its cloud session is closed, its report follows.
  void cancel() {
    if (!cancelled_ && !done_)
      self_->send(session_, cancel_atom::value);
    cancelled_ = true;
  }
  bool cancelled() const { return cancelled_; }
  bool done() const { return done_; }
  const response_report& report() const { return report_; }

private:
  caf::scoped_actor self_;
  edge_session_actor session_;
  response_report report_;
  bool done_ = false;
  bool cancelled_ = false;
};

} // namespace ceco::app
