#include "actors/gateway.hpp"

#include <exception>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/context_manager.hpp"
#include "actors/wire_bridge.hpp"
#include "net/sessions.hpp"

namespace ceco {
using wire_message_ptr = std::shared_ptr<wire::message>;
}
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::wire_message_ptr)

namespace ceco {

namespace {

using request_atom = caf::atom_constant<caf::atom("wrequest")>;
using closed_atom = caf::atom_constant<caf::atom("wclosed")>;
using ended_atom = caf::atom_constant<caf::atom("wended")>;
using held_atom = caf::atom_constant<caf::atom("wheld")>;

struct gateway_state {
  cloud_api front;
  std::string secret;
  std::shared_ptr<std::atomic<wire::server*>> server;
  std::unordered_set<wire::connection_id> greeted;  // open connections whose hello passed
  wire::session_owners owners;
  int max_sessions_per_connection = 0;
  std::unordered_map<wire::connection_id, int> opening;  // opens asked, not yet answered
  std::function<void(const std::string&)> log;  // a refused hello, with the peer's address
  static inline const char* name = "gateway";
};

using self_ptr = caf::stateful_actor<gateway_state>*;

/// Closes a session no connection owns any more (its connection closed).
void close_orphan(self_ptr self, uint64_t session) {
  self->request(self->state.front, caf::infinite, close_session{session})
    .then([](session_summary&) {}, [](caf::error&) {});  // gone already: fine
}

void answer(self_ptr self, wire::connection_id conn, uint32_t request_id, wire::message reply) {
  if (auto* server = self->state.server->load())
    server->reply(conn, request_id, std::move(reply));
}

/// Asks the front; `on_reply` sees the reply before it is answered.
template <class Request, class OnReply, class Reply = reply_t<Request>>
void ask_then(self_ptr self, wire::connection_id conn, uint32_t request_id, OnReply on_reply,
              Request x) {
  self->request(self->state.front, caf::infinite, std::move(x))
    .then(
      [=](Reply& r) mutable {
        on_reply(r);
        answer(self, conn, request_id, reply_frame(std::move(r)));
      },
      [=](caf::error& err) { answer(self, conn, request_id, reply_frame(err)); });
}

template <class Request>
void ask(self_ptr self, wire::connection_id conn, uint32_t request_id, Request x) {
  ask_then(self, conn, request_id, [](const reply_t<Request>&) {}, std::move(x));
}

/// Hands a greeted connection's request for one of its sessions to the front:
/// every request of cloud_protocol as it is, open and close also counted
/// against the connection.
struct request_visitor {
  self_ptr self;
  wire::connection_id conn;
  uint32_t rid;
  void operator()(wire::open_session& open) {
    open_then(std::move(open), [](uint64_t id) { return id; });
  }
  /// The cloud strategy's first request, which opens its own session
  /// (session 0): counted and owned as an open; polls name the session.
  void operator()(generate_request& g) {
    if (g.session != 0)
      return ask(self, conn, rid, std::move(g));
    open_then(std::move(g), [](const generate_reply& r) { return r.session; });
  }
  /// An open, or a request that opens its session: refused past the
  /// connection's cap, its session owned by the connection once answered.
  template <class Request, class IdOf>
  void open_then(Request req, IdOf id_of) {
    using reply = reply_t<Request>;
    auto& st = self->state;
    const auto held = st.owners.count(conn) + size_t(st.opening[conn]);
    if (held >= size_t(st.max_sessions_per_connection))
      return answer(self, conn, rid,
                    reply_frame(make_error(
                      ceco_errc::session_limit,
                      fmt::format("this connection holds {} session(s), the most one connection "
                                  "may (session.max_sessions_per_connection = {}): close one first",
                                  held, st.max_sessions_per_connection))));
    ++st.opening[conn];
    // The count drops when the front answers, either way; a connection that
    // closed meanwhile has no count left and owns nothing.
    auto answered = [self = self, conn = conn] {
      auto it = self->state.opening.find(conn);
      if (it != self->state.opening.end() && --it->second <= 0)
        self->state.opening.erase(it);
    };
    self->request(st.front, caf::infinite, std::move(req))
      .then(
        [self = self, conn = conn, rid = rid, answered, id_of](reply& r) {
          answered();
          const uint64_t id = id_of(r);
          if (!self->state.greeted.count(conn))  // closed meanwhile: no one can use it
            return close_orphan(self, id);
          self->state.owners.add(conn, id);
          answer(self, conn, rid, reply_frame(std::move(r)));
        },
        [self = self, conn = conn, rid = rid, answered](caf::error& err) {
          answered();
          answer(self, conn, rid, reply_frame(err));
        });
  }
  void operator()(wire::close_session& c) {
    ask_then(self, conn, rid,
             [self = self, conn = conn, id = c.session](const session_summary&) {
               self->state.owners.remove(conn, id);
             },
             std::move(c));
  }
  template <class T>
  void operator()(T& other) {
    if constexpr (is_cloud_request<T>)
      ask(self, conn, rid, std::move(other));
    else
      answer(self, conn, rid,
             reply_frame(make_error(ceco_errc::unknown_message,
                                    fmt::format("the cloud does not serve {} frames",
                                                wire::to_string(wire::type_of(other))))));
  }
};

void handle(self_ptr self, wire::connection_id conn, uint32_t rid, wire::message& msg) {
  auto& st = self->state;
  if (auto* hello = std::get_if<hello_msg>(&msg)) {
    hello->secret = st.secret;  // the connection proved it in the transport's handshake
    std::string peer;
    if (auto* server = st.server->load())
      peer = server->peer(conn);
    self->request(st.front, caf::infinite, std::move(*hello))
      .then(
        [=](hello_msg& r) {
          self->state.greeted.insert(conn);
          answer(self, conn, rid, reply_frame(std::move(r)));
        },
        [=](caf::error& err) {
          if (self->state.log)
            self->state.log(fmt::format("refused the edge at {}: {}",
                                        peer.empty() ? "a closed connection" : peer,
                                        describe(err)));
          answer(self, conn, rid, reply_frame(err));
        });
    return;
  }
  if (!st.greeted.count(conn))
    return answer(self, conn, rid,
                  reply_frame(make_error(ceco_errc::handshake_failed,
                                         "send hello_msg first: this node has not passed the "
                                         "handshake")));
  const auto* generate = std::get_if<generate_request>(&msg);
  const bool opens = generate && generate->session == 0;  // opens its own session
  if (auto session = wire::session_of(msg); session && !opens && !st.owners.owns(conn, *session))
    return answer(self, conn, rid,
                  reply_frame(make_error(
                    ceco_errc::unknown_session,
                    fmt::format("session {:016x} is not open (never opened, closed, or expired)",
                                *session))));
  std::visit(request_visitor{self, conn, rid}, msg);
}

caf::behavior gateway_fn(self_ptr self, cloud_api front, std::string secret,
                         std::shared_ptr<std::atomic<wire::server*>> server,
                         int max_sessions_per_connection,
                         std::function<void(const std::string&)> log) {
  self->state.front = std::move(front);
  self->state.log = std::move(log);
  self->state.max_sessions_per_connection = max_sessions_per_connection;
  self->state.secret = std::move(secret);
  self->state.server = std::move(server);
  return {
    [=](request_atom, wire::connection_id conn, uint32_t rid, wire_message_ptr& msg) {
      // Whatever a handler throws is the request's error, never the gateway's end.
      try {
        handle(self, conn, rid, *msg);
      } catch (const std::exception& e) {
        answer(self, conn, rid,
               reply_frame(make_error(ceco_errc::compute_failed,
                                      fmt::format("the cloud failed on this request: {}", e.what()))));
      }
    },
    [=](closed_atom, wire::connection_id conn) {
      self->state.greeted.erase(conn);
      self->state.opening.erase(conn);
      // Bound to this connection, they can never be reached again: closed
      // now, they stop holding session.max_sessions.
      for (auto session : self->state.owners.release(conn))
        close_orphan(self, session);
    },
    [=](ended_atom, uint64_t session) { self->state.owners.forget(session); },
    [=](held_atom) -> int64_t {
      int64_t opening = 0;
      for (auto& [conn, n] : self->state.opening)
        opening += n;
      return int64_t(self->state.owners.total()) + opening;
    },
  };
}

} // namespace

cloud_gateway::cloud_gateway(caf::actor_system& sys, cloud_api front, wire::server_options opts,
                             int max_sessions_per_connection,
                             std::shared_ptr<session_end_hook> session_ends,
                             std::function<void(const std::string&)> log)
  : sys_(sys), session_ends_(std::move(session_ends)),
    replies_(std::make_shared<std::atomic<wire::server*>>(nullptr)) {
  gateway_ = sys.spawn(gateway_fn, std::move(front), opts.secret, replies_,
                       max_sessions_per_connection, std::move(log));
  auto gw = gateway_;
  if (session_ends_)
    session_ends_->set([gw](uint64_t session) { caf::anon_send(gw, ended_atom::value, session); });
  try {
    server_ = std::make_unique<wire::server>(
      std::move(opts),
      [gw](wire::connection_id conn, uint32_t rid, wire::message msg) {
        caf::anon_send(gw, request_atom::value, conn, rid,
                       std::make_shared<wire::message>(std::move(msg)));
      },
      [gw](wire::connection_id conn, const wire::wire_error&) {
        caf::anon_send(gw, closed_atom::value, conn);
      });
  } catch (...) {
    if (session_ends_)
      session_ends_->set({});
    caf::anon_send_exit(gateway_, caf::exit_reason::user_shutdown);
    throw;
  }
  replies_->store(server_.get());
}

cloud_gateway::~cloud_gateway() { stop(); }

int64_t cloud_gateway::sessions_held() {
  int64_t held = -1;
  caf::scoped_actor self{sys_};
  self->request(gateway_, std::chrono::seconds(1), held_atom::value)
    .receive([&](int64_t n) { held = n; }, [](caf::error&) {});
  return held;
}

void cloud_gateway::stop() {
  if (!server_)
    return;
  if (session_ends_)
    session_ends_->set({});
  replies_->store(nullptr);
  server_->stop();
  server_.reset();
  caf::anon_send_exit(gateway_, caf::exit_reason::user_shutdown);
}

} // namespace ceco
