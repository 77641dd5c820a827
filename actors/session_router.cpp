#include "actors/session_router.hpp"

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

namespace ceco {

namespace {

struct worker_slot {
  worker_status status;
  worker_api handle;  // invalid while down
};

/// Where a session of this router lives.
struct placed_session {
  size_t worker = 0;
  uint64_t local = 0;  // its id at that worker
};

/// A request forwarded to a worker and not yet answered: failed with
/// session_lost if the worker goes down first.
struct pending_request {
  size_t worker = 0;
  std::function<void(const caf::error&)> fail;
};

struct router_state {
  session_router_options opts;
  std::vector<worker_slot> workers;
  std::unordered_map<uint64_t, placed_session> sessions;  // by the id the edge knows
  std::unordered_set<uint64_t> lost;                      // ids of sessions a worker took down
  std::deque<uint64_t> lost_order;                        // oldest first, to bound `lost`
  std::unordered_set<uint64_t> lost_untold;               // lost, on_end not yet told
  std::map<uint64_t, pending_request> pending;
  uint64_t next_session = 1;
  uint64_t next_request = 1;
  int64_t refused_full = 0;
  int64_t refused_none = 0;
  static inline const char* name = "session_router";

  /// The error for a session that is not (or no longer) here. A lost one
  /// ends for those told of endings (the gateway's count of a connection's
  /// sessions) when its edge closes it (after opening its replacement), or
  /// when the ids remembered overflow: ended any earlier, requests of it still
  /// on their way would be refused by the gateway as unknown, and the edge
  /// would wait for a link that never went down instead of reopening.
  caf::error missing(uint64_t id, bool closing) {
    if (lost.count(id)) {
      if (closing && opts.on_end && lost_untold.erase(id))
        (*opts.on_end)(id);
      return make_error(ceco_errc::session_lost,
                        fmt::format("session {} was on a cloud worker that went down; open a new "
                                    "session and upload its context again", id));
    }
    return make_error(ceco_errc::unknown_session, fmt::format("session {} is not open", id));
  }

  /// The session ended (closed, expired at its worker, or lost: then
  /// `tell` is false, see missing()).
  void end(uint64_t id, bool tell = true) {
    auto i = sessions.find(id);
    if (i == sessions.end())
      return;
    --workers[i->second.worker].status.sessions;
    sessions.erase(i);
    if (tell && opts.on_end)
      (*opts.on_end)(id);
  }

  void remember_lost(uint64_t id) {
    lost.insert(id);
    lost_untold.insert(id);
    lost_order.push_back(id);
    while (lost_order.size() > opts.remembered_lost) {
      lost.erase(lost_order.front());
      if (opts.on_end && lost_untold.erase(lost_order.front()))
        (*opts.on_end)(lost_order.front());
      lost_order.pop_front();
    }
  }

  /// A forwarded request is answered: false if it was failed already.
  bool settle(uint64_t tag) { return pending.erase(tag) > 0; }
};

using router_ptr = session_router_actor::stateful_pointer<router_state>;

constexpr auto keep = [](auto&) {};

/// Forwards a request naming its session (`.session`) to that session's
/// worker, the id translated, and delivers the reply, translated by `fix`.
template <class Request, class Fix>
caf::result<reply_t<Request>> forward(router_ptr self, Request msg, Fix fix) {
  using reply = reply_t<Request>;
  auto& st = self->state;
  const auto id = msg.session;
  auto where = st.sessions.find(id);
  if (where == st.sessions.end())
    return st.missing(id, std::is_same_v<Request, close_session>);
  const auto worker = where->second.worker;
  msg.session = where->second.local;
  auto rp = self->template make_response_promise<reply>();
  const auto tag = st.next_request++;
  st.pending[tag] = {worker, [rp](const caf::error& err) mutable { rp.deliver(err); }};
  self->request(st.workers[worker].handle, caf::infinite, std::move(msg))
    .then(
      [=](reply& r) mutable {
        if (!self->state.settle(tag))
          return;
        fix(r);
        rp.deliver(std::move(r));
      },
      [=](caf::error& err) mutable {
        if (!self->state.settle(tag))
          return;
        // Expired (or closed) at the worker: no longer open here either.
        if (is(err, ceco_errc::unknown_session))
          self->state.end(id);
        rp.deliver(std::move(err));
      });
  return rp;
}

/// The worker that is up with the fewest sessions, among those not yet tried.
std::optional<size_t> pick(const router_state& st, const std::vector<bool>& tried) {
  std::optional<size_t> best;
  for (size_t i = 0; i < st.workers.size(); ++i) {
    const auto& w = st.workers[i];
    if (!w.handle || tried[i])
      continue;
    if (!best || w.status.sessions < st.workers[*best].status.sessions)
      best = i;
  }
  return best;
}

void open_on(router_ptr self, caf::typed_response_promise<uint64_t> rp, open_session open,
             std::vector<bool> tried) {
  auto& st = self->state;
  auto worker = pick(st, tried);
  if (!worker) {
    const bool none_up = std::none_of(st.workers.begin(), st.workers.end(),
                                      [](const worker_slot& w) { return bool(w.handle); });
    if (none_up) {
      ++st.refused_none;
      rp.deliver(make_error(ceco_errc::cloud_unreachable,
                            fmt::format("no cloud worker is up (of {})", st.workers.size())));
    } else {
      ++st.refused_full;
      rp.deliver(make_error(ceco_errc::session_limit,
                            "every cloud worker is full (session.max_sessions or "
                            "session.max_memory_mb at each)"));
    }
    return;
  }
  tried[*worker] = true;
  // An open on its way counts as a session there already: opens that arrive
  // together spread instead of all taking the worker that was emptiest.
  ++st.workers[*worker].status.sessions;
  const auto tag = st.next_request++;
  st.pending[tag] = {*worker, [=](const caf::error&) mutable {
                       // Down before it answered (its count was reset): the next worker.
                       open_on(self, rp, open, tried);
                     }};
  self->request(st.workers[*worker].handle, caf::infinite, open)
    .then(
      [=](uint64_t local) mutable {
        auto& st = self->state;
        if (!st.settle(tag))
          return;  // went down meanwhile; the open went elsewhere
        const auto id = st.next_session++;
        st.sessions[id] = {*worker, local};
        ++st.workers[*worker].status.placed;
        rp.deliver(id);
      },
      [=](caf::error& err) mutable {
        if (!self->state.settle(tag))
          return;
        --self->state.workers[*worker].status.sessions;
        if (is(err, ceco_errc::session_limit))
          return open_on(self, rp, open, tried);
        rp.deliver(std::move(err));
      });
}

/// A worker went down: its sessions are lost, its waiting requests failed.
void lose_worker(router_ptr self, size_t worker, const std::string& why) {
  auto& st = self->state;
  auto& w = st.workers[worker];
  w.handle = worker_api{};
  w.status.up = false;
  std::vector<uint64_t> gone;
  for (auto& [id, where] : st.sessions)
    if (where.worker == worker)
      gone.push_back(id);
  for (auto id : gone) {
    st.end(id, false);
    st.remember_lost(id);
    ++w.status.lost;
  }
  w.status.sessions = 0;  // opens still on their way there are retried elsewhere
  std::vector<std::function<void(const caf::error&)>> fails;
  for (auto i = st.pending.begin(); i != st.pending.end();) {
    if (i->second.worker == worker) {
      fails.push_back(std::move(i->second.fail));
      i = st.pending.erase(i);
    } else {
      ++i;
    }
  }
  auto err = make_error(ceco_errc::session_lost,
                        fmt::format("cloud worker {} went down; open a new session and upload "
                                    "its context again", w.status.name));
  for (auto& fail : fails)
    fail(err);
  if (st.opts.on_worker_down)
    st.opts.on_worker_down(w.status.name, why, int64_t(gone.size()));
}

session_router_actor::behavior_type router_fn(router_ptr self, session_router_options opts) {
  self->state.opts = std::move(opts);
  self->set_down_handler([=](caf::down_msg& down) {
    auto& st = self->state;
    for (size_t i = 0; i < st.workers.size(); ++i)
      if (st.workers[i].handle && st.workers[i].handle.address() == down.source)
        return lose_worker(self, i, self->system().render(down.reason));
  });
  return {
    [=](join_atom, std::string& name, worker_api& handle) {
      auto& st = self->state;
      auto same = std::find_if(st.workers.begin(), st.workers.end(),
                               [&](const worker_slot& w) { return w.status.name == name; });
      if (same == st.workers.end()) {
        st.workers.push_back({});
        same = st.workers.end() - 1;
        same->status.name = name;
      }
      if (!handle)
        return;  // listed, not (yet) connected: shown as down
      if (same->handle) {
        if (same->handle == handle)
          return;
        lose_worker(self, size_t(same - st.workers.begin()), "replaced by a new connection");
      }
      same->handle = handle;
      same->status.up = true;
      ++same->status.joins;
      self->monitor(handle);
    },
    [=](cluster_atom) {
      auto& st = self->state;
      cluster_status out;
      for (auto& w : st.workers)
        out.workers.push_back(w.status);
      out.sessions = int64_t(st.sessions.size());
      out.refused_full = st.refused_full;
      out.refused_none = st.refused_none;
      return out;
    },
    [=](open_session& open) -> caf::result<uint64_t> {
      auto rp = self->make_response_promise<uint64_t>();
      open_on(self, rp, open, std::vector<bool>(self->state.workers.size(), false));
      return rp;
    },
    [=](upload_msg& m) -> caf::result<int32_t> { return forward(self, std::move(m), keep); },
    [=](draft_upload& m) -> caf::result<verdict> { return forward(self, std::move(m), keep); },
    [=](get_atom, uint64_t) -> caf::result<cloud_context_ptr> {
      return make_error(ceco_errc::not_placed_here,
                        "a gateway holds no session contexts: they live on its workers");
    },
    [=](infer_request& r) -> caf::result<infer_reply> { return forward(self, r, keep); },
    [=](naive_request& r) -> caf::result<infer_reply> { return forward(self, std::move(r), keep); },
    [=](generate_request& r) -> caf::result<generate_reply> {
      return forward(self, std::move(r), keep);
    },
    [=](evaluate_request& r) -> caf::result<exit_decision> {
      return forward(self, std::move(r), keep);
    },
    [=](close_session& c) -> caf::result<session_summary> {
      const auto id = c.session;
      return forward(self, c, [=](session_summary& s) {
        s.session = id;
        self->state.end(id);
      });
    },
    [=](stats_atom) -> caf::result<cloud_stats> {
      // The workers' figures added up; sessions as placed here.
      auto& st = self->state;
      auto rp = self->make_response_promise<cloud_stats>();
      auto sum = std::make_shared<cloud_stats>();
      sum->step_sizes.assign(step_size_buckets, 0);
      auto left = std::make_shared<size_t>(0);
      for (auto& w : st.workers)
        if (w.handle)
          ++*left;
      if (*left == 0) {
        sum->sessions = int64_t(st.sessions.size());
        return *sum;
      }
      auto one_done = [=]() mutable {
        if (--*left == 0) {
          sum->sessions = int64_t(self->state.sessions.size());
          rp.deliver(*sum);
        }
      };
      for (auto& w : st.workers)
        if (w.handle)
          self->request(w.handle, std::chrono::seconds(5), stats_atom::value)
            .then(
              [=](cloud_stats& s) mutable {
                sum->context_bytes += s.context_bytes;
                sum->steps += s.steps;
                sum->stepped_sessions += s.stepped_sessions;
                sum->session_bytes = std::max(sum->session_bytes, s.session_bytes);
                sum->tokens += s.tokens;
                sum->positions += s.positions;
                sum->refused_limit += s.refused_limit;
                sum->refused_memory += s.refused_memory;
                sum->expired += s.expired;
                for (size_t i = 0; i < s.step_sizes.size() && i < sum->step_sizes.size(); ++i)
                  sum->step_sizes[i] += s.step_sizes[i];
                one_done();
              },
              [=](caf::error&) mutable { one_done(); });
      return rp;
    },
    [=](sweep_atom, uint64_t) {
      // Each worker expires its own sessions.
    },
  };
}

} // namespace

session_router_actor spawn_session_router(caf::actor_system& sys, session_router_options opts) {
  return sys.spawn(router_fn, std::move(opts));
}

} // namespace ceco
