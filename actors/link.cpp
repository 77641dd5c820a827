#include "actors/link.hpp"

#include <deque>
#include <functional>
#include <map>
#include <random>

#include <fmt/format.h>

#include "actors/reconnect.hpp"
#include "actors/sim_clock.hpp"
#include "actors/wire_bridge.hpp"

namespace ceco {

namespace {

using clock_type = sim_clock;

enum direction { up = 0, down = 1 };

/// One direction of one edge's pipe: each session is an edge of its own
/// (an open, before it has a session, goes on pipe 0).
struct pipe_clock {
  clock_type::time_point free_at;       // when the pipe finishes sending
  clock_type::time_point last_arrival;  // keeps the pipe FIFO
};

struct link_state {
  cloud_api cloud;
  link_options opts;
  std::mt19937_64 rng;
  std::map<std::pair<uint64_t, int>, pipe_clock> pipes;  // (session, direction)
  // Messages on their way, by arrival; equal arrivals keep their order.
  std::multimap<clock_type::time_point, std::function<void()>> in_flight[2];
  std::map<uint64_t, link_counters> counters;
  // Requests the cloud has not answered yet, by id: how to fail each one.
  std::map<uint64_t, std::function<void(const caf::error&)>> outstanding;
  uint64_t next_request = 0;
  caf::error down;  // set while the cloud is lost
  int64_t epoch = 0;  // reconnections so far
  reconnector reconnecting;  // running while the cloud is lost, if the link can reconnect
  static inline const char* name = "link";

  void count(uint64_t session, direction dir, int64_t bytes) {
    auto& c = counters[session];
    (dir == up ? c.bytes_up : c.bytes_down) += bytes;
    (dir == up ? c.messages_up : c.messages_down) += 1;
  }
};

using self_ptr = link_actor::stateful_pointer<link_state>;

/// Puts a message of `bytes` on the pipe of `session`; `deliver` runs when it
/// arrives.
void transmit(self_ptr self, uint64_t session, direction dir, int64_t bytes,
              std::function<void()> deliver) {
  auto& st = self->state;
  auto& pipe = st.pipes[{session, int(dir)}];
  auto now = clock_type::now();
  std::chrono::duration<double> tx{0.0};
  if (st.opts.bandwidth_mbps > 0)
    tx = std::chrono::duration<double>(double(bytes) * 8.0 / (st.opts.bandwidth_mbps * 1e6));
  auto start = std::max(now, pipe.free_at);
  pipe.free_at = start + std::chrono::duration_cast<clock_type::duration>(tx);
  double extra_ms = st.opts.latency_ms;
  if (st.opts.jitter_ms > 0)
    extra_ms += std::uniform_real_distribution<double>(0.0, st.opts.jitter_ms)(st.rng);
  auto arrive = pipe.free_at
                + std::chrono::duration_cast<clock_type::duration>(
                  std::chrono::duration<double, std::milli>(extra_ms));
  arrive = std::max(arrive, pipe.last_arrival);
  pipe.last_arrival = arrive;
  st.in_flight[dir].emplace(arrive, std::move(deliver));
  self->delayed_send(self, std::max(arrive - now, clock_type::duration(0)), deliver_atom::value,
                     uint64_t(dir));
}

/// Adds up the bytes of the tensors a message's fields hold.
struct tensor_bytes {
  static constexpr bool largest = false;
  struct { int32_t width = 0, context = 0, vocab = 0, layers = 0; uint32_t max_text = 0; } lim;
  int64_t total = 0;

  template <class... Ts> void u64(Ts&&...) {}
  template <class... Ts> void u32(Ts&&...) {}
  template <class... Ts> void u8(Ts&&...) {}
  template <class... Ts> void i32(Ts&&...) {}
  template <class... Ts> void i64(Ts&&...) {}
  template <class... Ts> void f32(Ts&&...) {}
  template <class... Ts> void boolean(Ts&&...) {}
  template <class... Ts> void bytes(Ts&&...) {}
  template <class... Ts> void vec(Ts&&...) {}
  template <class... Ts> void text(Ts&&...) {}
  void blob(const char*, tensor_blob& b, int64_t, int64_t, int32_t) { total += int64_t(b.bytes.size()); }
};

/// Bytes of hidden states a message carries (their transfer time scales in
/// profile mode).
template <class T>
int64_t hidden_bytes(const T& x) {
  tensor_bytes sum;
  fields(sum, const_cast<T&>(x));  // the sum only reads
  return sum.total;
}

/// Request up, reply (or error) down, each through the pipe. When the cloud
/// is lost, every request it has not answered fails at once (CAF would
/// otherwise hold them until their timeouts).
template <class Request, class Reply = reply_t<Request>>
caf::typed_response_promise<Reply> relay(self_ptr self, Request&& x) {
  const uint64_t session = proto::session_of(x);
  auto rp = self->template make_response_promise<Reply>();
  if (self->state.down) {
    rp.deliver(self->state.down);
    return rp;
  }
  const bool frames = self->state.opts.remote;
  const int64_t up_bytes = frames ? request_frame_bytes(x) : wire_size(x);
  if (session != 0)
    self->state.count(session, up, up_bytes);
  const auto scale = self->state.opts.hidden_scale;
  const int64_t sent_bytes =
    scale == 1.0 ? up_bytes
                 : up_bytes + int64_t(double(hidden_bytes(x)) * (scale - 1.0));
  transmit(self, session, up, sent_bytes, [=, x = std::move(x)]() mutable {
    if (self->state.down) {
      rp.deliver(self->state.down);
      return;
    }
    const uint64_t id = self->state.next_request++;
    self->state.outstanding[id] = [rp](const caf::error& err) mutable { rp.deliver(err); };
    self->request(self->state.cloud, caf::infinite, std::move(x))
      .then(
        [=](Reply& r) mutable {
          if (self->state.outstanding.erase(id) == 0)
            return;  // already failed by the down handler
          uint64_t s = session;
          if constexpr (std::is_same_v<Request, open_session>) {
            if (s == 0) {  // an open: its traffic belongs to the new session
              s = r;
              self->state.count(s, up, up_bytes);
            }
          }
          if constexpr (std::is_same_v<Request, generate_request>) {
            if (s == 0 && r.session != 0) {  // opened its own session (docs/design.md §2)
              s = r.session;
              self->state.count(s, up, up_bytes);
            }
          }
          const int64_t bytes = frames ? reply_frame_bytes(r) : wire_size(r);
          self->state.count(s, down, bytes);
          transmit(self, s, down, bytes, [=]() mutable { rp.deliver(r); });
        },
        [=](caf::error& err) mutable {
          if (self->state.outstanding.erase(id) == 0)
            return;
          const int64_t bytes = frames ? reply_frame_bytes(err) : wire_size(err);
          self->state.count(session, down, bytes);
          transmit(self, session, down, bytes, [=]() mutable { rp.deliver(err); });
        });
  });
  return rp;
}

link_actor::behavior_type link_fn(self_ptr self, cloud_api cloud, link_options opts) {
  self->state.cloud = std::move(cloud);
  self->state.opts = opts;
  self->state.rng.seed(opts.seed);
  self->monitor(self->state.cloud);
  if (opts.remote)
    self->set_exit_handler([=](caf::exit_msg& msg) {
      // The remote front holds the connection: it goes with the link.
      self->send_exit(self->state.cloud, msg.reason);
      self->quit(msg.reason);
    });
  self->set_down_handler([=](caf::down_msg& msg) {
    auto& st = self->state;
    st.down = make_error(ceco_errc::cloud_unreachable,
                         "the connection to the cloud was lost (" + caf::to_string(msg.reason) + ")");
    auto pending = std::move(st.outstanding);
    st.outstanding.clear();
    for (auto& [id, fail] : pending)
      fail(st.down);
    if (st.opts.reconnect && !st.reconnecting.running()) {
      auto link = caf::actor_cast<caf::actor>(self);
      st.reconnecting.start(self->home_system(), st.opts.reconnect, [link](cloud_api front) {
        caf::anon_send(caf::actor_cast<link_actor>(link), reconnect_atom::value,
                       caf::actor_cast<caf::actor>(front));
      });
    }
  });
  return behavior_of<link_actor::behavior_type>(
    cloud_protocol{},
    [=](auto rpc) {
      using request = typename decltype(rpc)::request;
      return [=](request& x) { return relay(self, std::move(x)); };
    },
    [=](stats_atom, uint64_t id) -> link_counters { return self->state.counters[id]; },
    [=](reconnect_atom, caf::actor front) {
      auto& st = self->state;
      st.cloud = caf::actor_cast<cloud_api>(front);
      self->monitor(st.cloud);
      st.down = {};
      st.reconnecting.done();
      ++st.epoch;
      fmt::print(stderr, "ceco: reconnected to the cloud\n");
    },
    [=](status_atom) -> int64_t { return self->state.down ? -1 : self->state.epoch; },
    [=](deliver_atom, uint64_t dir) {
      // Runs every message of that direction that has arrived, in order.
      auto& q = self->state.in_flight[dir];
      auto now = clock_type::now();
      while (!q.empty() && q.begin()->first <= now) {
        auto deliver = std::move(q.begin()->second);
        q.erase(q.begin());
        deliver();
      }
    });
}

} // namespace

link_actor spawn_link(caf::actor_system& sys, cloud_api cloud, link_options opts) {
  return sys.spawn(link_fn, std::move(cloud), opts);
}

} // namespace ceco
