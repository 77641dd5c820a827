#include "actors/cluster.hpp"
#include "actors/cluster_port.hpp"

#include <chrono>
#include <set>

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <fmt/format.h>

namespace ceco {

namespace {

bool uses_tls(const settings& s) { return !s.cluster.insecure; }

struct worker_front_state {
  hello_msg mine;
  greeted_nodes greeted;  // gateway nodes whose hello was accepted
  static inline const char* name = "worker_front";
};

using front_ptr = worker_api::stateful_pointer<worker_front_state>;

/// Only this process and gateways that passed the hello are served.
caf::error refuse_stranger(front_ptr self) {
  return self->state.greeted.refuse_stranger(self->current_sender(), self->node(),
                                             "this gateway");
}

worker_api::behavior_type worker_front_fn(front_ptr self, context_manager_actor contexts,
                                          hello_msg mine) {
  // The cluster's certificates authenticate the gateway; cloud.secret is the
  // edges' business and never travels between cloud nodes.
  mine.secret.clear();
  self->state.mine = std::move(mine);
  self->set_default_handler([](caf::scheduled_actor*, caf::message_view& x) -> caf::result<caf::message> {
    return make_error(ceco_errc::unknown_message,
                      fmt::format("a cloud worker does not handle this message of {} element(s)",
                                  x.content().size()));
  });
  return behavior_of<worker_api::behavior_type>(worker_protocol{}, [=](auto rpc) {
    using request = typename decltype(rpc)::request;
    using reply = typename decltype(rpc)::reply;
    return [=](request& x) -> caf::result<reply> {
      if constexpr (std::is_same_v<request, hello_msg>) {
        x.secret.clear();
        if (auto diff = compare_hello(x, self->state.mine); !diff.empty())
          return make_error(ceco_errc::handshake_failed,
                            "the cloud worker refuses this gateway: " + diff);
        self->state.greeted.add(self->current_sender());
        return self->state.mine;
      } else {
        if (auto err = refuse_stranger(self))
          return err;
        return self->delegate(contexts, std::move(x));
      }
    };
  });
}

} // namespace

void configure_cluster(caf::actor_system_config& cfg, const settings& s) {
  if (s.cluster.role == "single" && s.cluster.stage_hosts.empty())
    return;
  cfg.load<caf::io::middleman>();
  // A peer that stops answering (cut off, not closed) is dropped after the
  // connection timeout, which takes its sessions down with it.
  cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(500)});
  cfg.set("middleman.connection-timeout", caf::timespan{std::chrono::seconds(3)});
  if (uses_tls(s)) {
    cfg.load<caf::openssl::manager>();
    cfg.openssl_certificate = s.cluster.tls_certificate;
    cfg.openssl_key = s.cluster.tls_key;
    cfg.openssl_cafile = s.cluster.tls_ca_file;
  }
}

std::string describe_cluster_transport(const settings& s) {
  return uses_tls(s) ? "mutual TLS" : "plain TCP (cluster.insecure)";
}

worker_api spawn_worker_front(caf::actor_system& sys, context_manager_actor contexts,
                              hello_msg mine) {
  return sys.spawn(worker_front_fn, std::move(contexts), std::move(mine));
}

uint16_t publish_worker(caf::actor_system& sys, const settings& s, const worker_api& front) {
  return publish_on_cluster_port(sys, s, front);
}

void stop_worker(caf::actor_system& sys, const settings& s, const worker_api& front,
                 uint16_t port) {
  stop_on_cluster_port(sys, s, front, port);
}

worker_joiner::worker_joiner(caf::actor_system& sys, const settings& s,
                             session_router_actor router, hello_msg mine,
                             std::function<void(const std::string&)> log)
  : sys_(sys), settings_(s), router_(std::move(router)), mine_(std::move(mine)),
    log_(std::move(log)) {
  mine_.secret.clear();
  for (const auto& address : settings_.cluster.workers)  // listed, down until they join
    caf::anon_send(router_, join_atom::value, address, worker_api{});
  thread_ = std::thread([this] {
    const auto interval = std::chrono::milliseconds(settings_.cluster.join_interval_ms);
    while (!stopping_) {
      join_now();
      for (auto waited = std::chrono::milliseconds(0); waited < interval && !stopping_;
           waited += std::chrono::milliseconds(10))
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
}

worker_joiner::~worker_joiner() { stop(); }

void worker_joiner::stop() {
  stopping_ = true;
  if (thread_.joinable())
    thread_.join();
}

size_t worker_joiner::join_now() {
  caf::scoped_actor self{sys_};
  std::set<std::string> up;
  self->request(router_, std::chrono::seconds(5), cluster_atom::value)
    .receive(
      [&](cluster_status& st) {
        for (auto& w : st.workers)
          if (w.up)
            up.insert(w.name);
      },
      [&](caf::error&) {});
  for (const auto& address : settings_.cluster.workers) {
    if (stopping_ || up.count(address))
      continue;
    auto [host, port] = *split_host_port(address);  // checked by the settings
    auto worker = connect_on_cluster_port<worker_api>(sys_, settings_, host, uint16_t(port));
    // Each failure is logged once, until it changes (a worker that is not up
    // yet is tried again after cluster.join_interval_ms).
    auto failed = [&](const std::string& why) {
      if (last_failure_[address] != why)
        log_(fmt::format("worker {}: {}", address, why));
      last_failure_[address] = why;
    };
    if (!worker) {
      failed(describe(worker.error()));
      continue;
    }
    std::string refused;
    self->request(*worker, std::chrono::seconds(10), mine_)
      .receive([&](hello_msg&) {}, [&](caf::error& err) { refused = describe(err); });
    if (!refused.empty()) {
      failed("refused: " + refused);
      continue;
    }
    last_failure_.erase(address);
    caf::anon_send(router_, join_atom::value, address, *worker);
    log_(fmt::format("worker {} joined", address));
    up.insert(address);
  }
  return up.size();
}

} // namespace ceco
