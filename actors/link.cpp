#include "actors/link.hpp"

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>

namespace ceco {

namespace {

using clock_type = std::chrono::steady_clock;

enum direction { up = 0, down = 1 };

struct transit {
  clock_type::time_point arrive;
  std::function<void()> deliver;
};

struct link_state {
  cloud_api cloud;
  link_options opts;
  std::mt19937_64 rng;
  clock_type::time_point free_at[2];      // when the pipe finishes sending
  clock_type::time_point last_arrival[2]; // keeps each direction FIFO
  std::deque<transit> in_flight[2];
  std::map<uint64_t, link_counters> counters;
  // Requests the cloud has not answered yet, by id: how to fail each one.
  std::map<uint64_t, std::function<void(const caf::error&)>> outstanding;
  uint64_t next_request = 0;
  caf::error down;  // set while the cloud is lost
  int64_t epoch = 0;  // reconnections so far
  std::shared_ptr<std::atomic<bool>> stop_reconnecting = std::make_shared<std::atomic<bool>>(false);
  bool reconnecting = false;
  static inline const char* name = "link";

  ~link_state() { *stop_reconnecting = true; }

  void count(uint64_t session, direction dir, int64_t bytes) {
    auto& c = counters[session];
    (dir == up ? c.bytes_up : c.bytes_down) += bytes;
    (dir == up ? c.messages_up : c.messages_down) += 1;
  }
};

using self_ptr = link_actor::stateful_pointer<link_state>;

/// Puts a message of `bytes` on the pipe; `deliver` runs when it arrives.
void transmit(self_ptr self, direction dir, int64_t bytes, std::function<void()> deliver) {
  auto& st = self->state;
  auto now = clock_type::now();
  std::chrono::duration<double> tx{0.0};
  if (st.opts.bandwidth_mbps > 0)
    tx = std::chrono::duration<double>(double(bytes) * 8.0 / (st.opts.bandwidth_mbps * 1e6));
  auto start = std::max(now, st.free_at[dir]);
  st.free_at[dir] = start + std::chrono::duration_cast<clock_type::duration>(tx);
  double extra_ms = st.opts.latency_ms;
  if (st.opts.jitter_ms > 0)
    extra_ms += std::uniform_real_distribution<double>(0.0, st.opts.jitter_ms)(st.rng);
  auto arrive = st.free_at[dir]
                + std::chrono::duration_cast<clock_type::duration>(
                  std::chrono::duration<double, std::milli>(extra_ms));
  arrive = std::max(arrive, st.last_arrival[dir]);
  st.last_arrival[dir] = arrive;
  st.in_flight[dir].push_back({arrive, std::move(deliver)});
  auto delay = std::chrono::duration_cast<std::chrono::microseconds>(arrive - now);
  self->delayed_send(self, std::max(delay, std::chrono::microseconds(0)), deliver_atom::value,
                     uint64_t(dir));
}

/// Request up, reply (or error) down, each through the pipe. When the cloud
/// is lost, every request it has not answered fails at once (CAF would
/// otherwise hold them until their timeouts).
template <class Reply, class... Ts>
caf::typed_response_promise<Reply> relay(self_ptr self, uint64_t session, Ts... xs) {
  auto rp = self->template make_response_promise<Reply>();
  if (self->state.down) {
    rp.deliver(self->state.down);
    return rp;
  }
  const int64_t up_bytes = (wire_size(xs) + ...);
  if (session != 0)
    self->state.count(session, up, up_bytes);
  transmit(self, up, up_bytes, [=]() mutable {
    if (self->state.down) {
      rp.deliver(self->state.down);
      return;
    }
    const uint64_t id = self->state.next_request++;
    self->state.outstanding[id] = [rp](const caf::error& err) mutable { rp.deliver(err); };
    self->request(self->state.cloud, caf::infinite, xs...)
      .then(
        [=](Reply& r) mutable {
          if (self->state.outstanding.erase(id) == 0)
            return;  // already failed by the down handler
          uint64_t s = session;
          if constexpr (std::is_same_v<Reply, uint64_t>) {
            if (s == 0) {  // an open: its traffic belongs to the new session
              s = r;
              self->state.count(s, up, up_bytes);
            }
          }
          const int64_t bytes = wire_size(r);
          self->state.count(s, down, bytes);
          transmit(self, down, bytes, [=]() mutable { rp.deliver(r); });
        },
        [=](caf::error& err) mutable {
          if (self->state.outstanding.erase(id) == 0)
            return;
          const int64_t bytes = wire_size(err);
          self->state.count(session, down, bytes);
          transmit(self, down, bytes, [=]() mutable { rp.deliver(err); });
        });
  });
  return rp;
}

/// Runs in its own thread: calls `reconnect` until it gives a cloud front,
/// then hands it to the link.
void reconnector_fn(caf::blocking_actor*, link_actor link,
                    std::function<caf::expected<cloud_api>()> reconnect,
                    std::shared_ptr<std::atomic<bool>> stop) {
  auto backoff = std::chrono::milliseconds(100);
  std::string last_error;
  while (!*stop) {
    auto front = reconnect();
    if (front) {
      caf::anon_send(link, reconnect_atom::value, caf::actor_cast<caf::actor>(*front));
      return;
    }
    auto err = caf::to_string(front.error());
    if (err != last_error)
      fmt::print(stderr, "ceco: cannot reconnect to the cloud yet ({}); retrying with backoff\n",
                 err);
    last_error = err;
    // Sleep in slices, so a link that goes away is not kept waiting.
    for (auto slept = std::chrono::milliseconds(0); slept < backoff && !*stop;
         slept += std::chrono::milliseconds(20))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

link_actor::behavior_type link_fn(self_ptr self, cloud_api cloud, link_options opts) {
  self->state.cloud = std::move(cloud);
  self->state.opts = opts;
  self->state.rng.seed(opts.seed);
  self->monitor(self->state.cloud);
  self->set_down_handler([=](caf::down_msg& msg) {
    auto& st = self->state;
    st.down = make_error(ceco_errc::cloud_unreachable,
                         "the connection to the cloud was lost (" + caf::to_string(msg.reason) + ")");
    auto pending = std::move(st.outstanding);
    st.outstanding.clear();
    for (auto& [id, fail] : pending)
      fail(st.down);
    if (st.opts.reconnect && !st.reconnecting) {
      st.reconnecting = true;
      self->home_system().spawn(reconnector_fn, caf::actor_cast<link_actor>(self),
                                st.opts.reconnect, st.stop_reconnecting);
    }
  });
  return {
    [=](hello_msg& h) { return relay<hello_msg>(self, 0, std::move(h)); },
    [=](open_atom a) { return relay<uint64_t>(self, 0, a); },
    [=](upload_msg& m) { return relay<int32_t>(self, m.session, std::move(m)); },
    [=](infer_request& r) { return relay<infer_reply>(self, r.session, r); },
    [=](naive_request& r) { return relay<infer_reply>(self, r.session, std::move(r)); },
    [=](generate_request& r) { return relay<generate_reply>(self, r.session, std::move(r)); },
    [=](close_atom a, uint64_t id) { return relay<session_summary>(self, id, a, id); },
    [=](evaluate_atom a, uint64_t id, tensor_blob& b) {
      return relay<exit_decision>(self, id, a, id, std::move(b));
    },
    [=](upload_atom a, uint64_t id, int32_t start, tensor_blob& b) {
      return relay<int32_t>(self, id, a, id, start, std::move(b));
    },
    [=](stats_atom, uint64_t id) -> link_counters { return self->state.counters[id]; },
    [=](reconnect_atom, caf::actor front) {
      auto& st = self->state;
      st.cloud = caf::actor_cast<cloud_api>(front);
      self->monitor(st.cloud);
      st.down = {};
      st.reconnecting = false;
      ++st.epoch;
      fmt::print(stderr, "ceco: reconnected to the cloud\n");
    },
    [=](status_atom) -> int64_t { return self->state.down ? -1 : self->state.epoch; },
    [=](deliver_atom, uint64_t dir) {
      // Runs every message of that direction that has arrived, in order.
      auto& q = self->state.in_flight[dir];
      auto now = clock_type::now();
      while (!q.empty() && q.front().arrive <= now) {
        auto t = std::move(q.front());
        q.pop_front();
        t.deliver();
      }
    },
  };
}

struct cloud_front_state {
  hello_msg mine;
  std::set<caf::node_id> greeted;  // remote nodes whose hello was accepted
  static inline const char* name = "cloud_front";
};

using front_ptr = cloud_api::stateful_pointer<cloud_front_state>;

/// Only this process and nodes that passed the handshake are served.
caf::error refuse_stranger(front_ptr self) {
  auto sender = self->current_sender();
  if (!sender || sender->node() == self->node() || self->state.greeted.count(sender->node()))
    return {};
  return make_error(ceco_errc::handshake_failed,
                    "send hello_msg first: this node has not passed the handshake");
}

caf::error not_here(const char* actor, const char* key) {
  return make_error(ceco_errc::not_placed_here,
                    fmt::format("the {} runs on the edge ({} = \"edge\")", actor, key));
}

cloud_api::behavior_type cloud_front_fn(front_ptr self, context_manager_actor contexts,
                                        cloud_layers_actor layers, cloud_placed placed,
                                        hello_msg mine) {
  self->state.mine = std::move(mine);
  // Anything outside the protocol gets an error reply; the front keeps serving.
  self->set_default_handler([](caf::scheduled_actor*, caf::message_view& x) -> caf::result<caf::message> {
    return make_error(ceco_errc::unknown_message,
                      fmt::format("the cloud front does not handle this message of {} element(s); "
                                  "see the protocol in actors/messages.hpp",
                                  x.content().size()));
  });
  return {
    [=](hello_msg& edge) -> caf::result<hello_msg> {
      if (auto diff = compare_hello(edge, self->state.mine); !diff.empty())
        return make_error(ceco_errc::handshake_failed, "the cloud refuses this edge: " + diff);
      if (auto sender = self->current_sender())
        self->state.greeted.insert(sender->node());
      auto reply = self->state.mine;
      reply.secret.clear();
      return reply;
    },
    [=](open_atom a) -> caf::result<uint64_t> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, a);
    },
    [=](upload_msg& m) -> caf::result<int32_t> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, std::move(m));
    },
    [=](infer_request& r) -> caf::result<infer_reply> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, r);
    },
    [=](naive_request& r) -> caf::result<infer_reply> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(layers, std::move(r));
    },
    [=](generate_request& r) -> caf::result<generate_reply> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(layers, std::move(r));
    },
    [=](close_atom a, uint64_t id) -> caf::result<session_summary> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, a, id);
    },
    [=](evaluate_atom a, uint64_t id, tensor_blob& b) -> caf::result<exit_decision> {
      if (auto err = refuse_stranger(self))
        return err;
      if (!placed.evaluator)
        return not_here("exit evaluator", "placement.exit_evaluator");
      return self->delegate(placed.evaluator, a, id, std::move(b));
    },
    [=](upload_atom a, uint64_t id, int32_t start, tensor_blob& b) -> caf::result<int32_t> {
      if (auto err = refuse_stranger(self))
        return err;
      if (!placed.uploader)
        return not_here("uploader", "placement.uploader");
      return self->delegate(placed.uploader, a, id, start, std::move(b));
    },
  };
}

} // namespace

link_actor spawn_link(caf::actor_system& sys, cloud_api cloud, link_options opts) {
  return sys.spawn(link_fn, std::move(cloud), opts);
}

cloud_api spawn_cloud_front(caf::actor_system& sys, context_manager_actor contexts,
                            cloud_layers_actor layers, cloud_placed placed, hello_msg hello) {
  return sys.spawn(cloud_front_fn, std::move(contexts), std::move(layers), std::move(placed),
                   std::move(hello));
}

} // namespace ceco
