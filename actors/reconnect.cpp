#include "actors/reconnect.hpp"

#include <algorithm>
#include <string>
#include <thread>

#include <fmt/format.h>

namespace ceco {

std::chrono::milliseconds backoff::after(int n) const {
  auto wait = first;
  for (int i = 0; i < n && wait < cap; ++i)
    wait *= 2;
  return std::min(wait, cap);
}

std::chrono::milliseconds backoff::total(int attempts) const {
  std::chrono::milliseconds sum{0};
  for (int n = 0; n < attempts; ++n)
    sum += after(n);
  return sum;
}

namespace {

void reconnector_fn(caf::blocking_actor*, connect_fn connect,
                    std::function<void(cloud_api)> reconnected, backoff policy,
                    std::shared_ptr<std::atomic<bool>> stop) {
  std::string last_error;
  for (int attempt = 0; !*stop; ++attempt) {
    auto front = connect();
    if (front) {
      if (*stop)  // the owner went while this attempt ran
        caf::anon_send_exit(*front, caf::exit_reason::user_shutdown);
      else
        reconnected(*front);
      return;
    }
    auto err = describe(front.error());
    if (err != last_error)
      fmt::print(stderr, "ceco: cannot reconnect to the cloud yet ({}); retrying with backoff\n",
                 err);
    last_error = err;
    // Sleep in slices, so an owner that goes away is not kept waiting.
    const auto wait = policy.after(attempt);
    for (auto slept = std::chrono::milliseconds(0); slept < wait && !*stop;
         slept += std::chrono::milliseconds(20))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

} // namespace

void reconnector::start(caf::actor_system& sys, connect_fn connect,
                        std::function<void(cloud_api)> reconnected, backoff policy) {
  running_ = true;
  sys.spawn(reconnector_fn, std::move(connect), std::move(reconnected), policy, stop_);
}

} // namespace ceco
