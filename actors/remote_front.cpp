#include "actors/remote_front.hpp"

#include <chrono>
#include <mutex>
#include <unordered_map>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/wire_bridge.hpp"

namespace ceco {
using wire_reply_ptr = std::shared_ptr<wire::result<wire::message>>;
}
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::wire_reply_ptr)

namespace ceco {

namespace {

using clock_type = std::chrono::steady_clock;
using reply_atom = caf::atom_constant<caf::atom("wreply")>;
using lost_atom = caf::atom_constant<caf::atom("wlost")>;
using beat_atom = caf::atom_constant<caf::atom("wbeat")>;
using pong_atom = caf::atom_constant<caf::atom("wpong")>;

/// Where the client's close notice goes: the actor, once it exists.
struct close_notice {
  std::mutex mutex;
  caf::actor target;
  bool lost = false;
  std::string why;

  void lose(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex);
    if (target)
      caf::anon_send(target, lost_atom::value, text);
    else
      lost = true, why = text;
  }
  void attach(caf::actor a) {
    std::lock_guard<std::mutex> lock(mutex);
    target = std::move(a);
    if (lost)
      caf::anon_send(target, lost_atom::value, why);
  }
};

struct remote_front_state {
  std::shared_ptr<wire::client> client;
  std::unordered_map<uint64_t, std::function<void(wire::result<wire::message>&&)>> pending;
  uint64_t next_request = 0;
  std::chrono::milliseconds heartbeat{0};
  bool ping_out = false;
  clock_type::time_point ping_sent;
  static inline const char* name = "remote_front";
};

using self_ptr = caf::stateful_actor<remote_front_state>*;

/// Sends the request's frame; its reply (or error) answers the promise.
template <class Request, class Reply = reply_t<Request>>
caf::response_promise forward(self_ptr self, Request x) {
  auto rp = self->make_response_promise();
  auto& st = self->state;
  const uint64_t id = st.next_request++;
  st.pending.emplace(id, [rp](wire::result<wire::message>&& r) mutable {
    auto reply = reply_of<Reply>(std::move(r));
    if (reply)
      rp.deliver(std::move(*reply));
    else
      rp.deliver(reply.error());
  });
  auto me = caf::actor_cast<caf::actor>(self);
  st.client->request(request_frame(std::move(x)),
                     [me, id](wire::result<wire::message> r) {
                       caf::anon_send(me, reply_atom::value, id,
                                      std::make_shared<wire::result<wire::message>>(std::move(r)));
                     });
  return rp;
}

void lose(self_ptr self, const std::string& why) {
  auto err = make_error(ceco_errc::cloud_unreachable, why);
  auto pending = std::move(self->state.pending);
  self->state.pending.clear();
  for (auto& [id, answer] : pending)
    answer(wire::wire_error{wire::wire_errc::closed, why});
  self->quit(err);
}

caf::behavior remote_front_fn(self_ptr self, std::shared_ptr<wire::client> client,
                              int heartbeat_ms) {
  self->state.client = client;
  self->state.heartbeat = std::chrono::milliseconds(heartbeat_ms);
  // The client's thread ends with the actor (never on that thread itself).
  self->attach_functor([client] { client->close(); });
  if (heartbeat_ms > 0)
    self->send(self, beat_atom::value);
  return behavior_of<caf::behavior>(
    cloud_protocol{},
    [=](auto rpc) {
      using request = typename decltype(rpc)::request;
      return [=](request& x) { return forward(self, std::move(x)); };
    },
    [=](reply_atom, uint64_t id, wire_reply_ptr& r) {
      auto it = self->state.pending.find(id);
      if (it == self->state.pending.end())
        return;
      auto answer = std::move(it->second);
      self->state.pending.erase(it);
      answer(std::move(*r));
    },
    [=](lost_atom, const std::string& why) { lose(self, why); },
    [=](beat_atom) {
      auto& st = self->state;
      auto now = clock_type::now();
      if (st.ping_out && now - st.ping_sent > 4 * st.heartbeat)
        return lose(self, fmt::format("the cloud answered no heartbeat for {} ms",
                                      (4 * st.heartbeat).count()));
      if (!st.ping_out) {
        st.ping_out = true;
        st.ping_sent = now;
        auto me = caf::actor_cast<caf::actor>(self);
        st.client->request(wire::ping{uint64_t(now.time_since_epoch().count())},
                           [me](wire::result<wire::message> r) {
                             if (wire::ok(r) && std::holds_alternative<wire::pong>(std::get<0>(r)))
                               caf::anon_send(me, pong_atom::value);
                           });
      }
      self->delayed_send(self, st.heartbeat, beat_atom::value);
    },
    [=](pong_atom) { self->state.ping_out = false; });
}

} // namespace

caf::expected<cloud_api> connect_remote_front(caf::actor_system& sys, wire::client_options opts,
                                              const hello_msg& hello, int heartbeat_ms,
                                              int timeout_ms) {
  const auto where = fmt::format("cloud at {}:{}", opts.host, opts.port);
  const bool tls = opts.tls.enabled();
  const bool no_secret = opts.secret.empty();
  auto notice = std::make_shared<close_notice>();
  auto connected = wire::client::connect(
    std::move(opts), [notice](const wire::wire_error& why) {
      notice->lose(fmt::format("{}: {}", wire::to_string(why.code), why.text));
    });
  if (!wire::ok(connected)) {
    const auto& err = std::get<1>(connected);
    if (err.code == wire::wire_errc::auth_failed && !tls && no_secret)
      return make_error(ceco_errc::handshake_failed,
                        fmt::format("{}: the cloud refuses this edge: no cloud.secret set on this "
                                    "edge, and the cloud requires one (--set cloud.secret=...; the "
                                    "shared-secret handshake failed: {})", where, err.text));
    if (err.code == wire::wire_errc::auth_failed && !tls)
      return make_error(ceco_errc::handshake_failed,
                        fmt::format("{}: the cloud refuses this edge: cloud.secret differs "
                                    "(the shared-secret handshake failed: {})", where, err.text));
    // A cloud speaking TLS to a plain edge (or the other way round) waits
    // for the other to start, as a hung one does.
    const auto agree = fmt::format(
      "both nodes must agree on cloud.tls, here {}, with certificates each signed by the "
      "other's cloud.tls_ca_file, and on cloud.secret",
      tls ? "true" : "false");
    if (err.code == wire::wire_errc::timed_out)
      return make_error(ceco_errc::handshake_timeout,
                        fmt::format("{}: the handshake did not complete: {} (the cloud is slow "
                                    "or hung, or no ceco cloud; {})",
                                    where, err.text, agree));
    if (err.code == wire::wire_errc::io && err.text.rfind("cannot", 0) == 0)
      return make_error(ceco_errc::cloud_unreachable, fmt::format("{}: {}", where, err.text));
    return make_error(
      ceco_errc::cloud_unreachable,
      fmt::format("{}: {}: {} (the cloud dropped the connection while setting it up: {})",
                  where, wire::to_string(err.code), err.text, agree));
  }
  std::shared_ptr<wire::client> client = std::move(std::get<0>(connected));
  auto answer = client->call(request_frame(hello), timeout_ms);
  // The cloud closed the connection over the hello frame itself: it is
  // outside the bounds of the cloud's model (layers, width, vocabulary).
  const std::string closed_over = "the server closed the connection: ";
  if (!wire::ok(answer) && std::get<1>(answer).code == wire::wire_errc::closed &&
      std::get<1>(answer).text.rfind(closed_over, 0) == 0) {
    client->close();
    return make_error(ceco_errc::handshake_failed,
                      fmt::format("{}: the cloud refuses this edge's hello: {} (the edge's model "
                                  "is not the cloud's: another shape)",
                                  where, std::get<1>(answer).text.substr(closed_over.size())));
  }
  if (!wire::ok(answer) && std::get<1>(answer).code == wire::wire_errc::timed_out) {
    client->close();
    return make_error(ceco_errc::handshake_timeout,
                      fmt::format("{}: the cloud did not answer the hello within {} ms "
                                  "(cloud.request_timeout_ms)",
                                  where, timeout_ms));
  }
  auto greeted = reply_of<hello_msg>(std::move(answer));
  if (!greeted) {
    client->close();
    if (is(greeted.error(), ceco_errc::handshake_failed))
      return make_error(ceco_errc::handshake_failed,
                        fmt::format("{}: {}", where, describe(greeted.error())));
    return greeted.error();
  }
  auto front = sys.spawn(remote_front_fn, client, heartbeat_ms);
  notice->attach(front);
  return caf::actor_cast<cloud_api>(front);
}

} // namespace ceco
