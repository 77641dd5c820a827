#include "actors/context_manager.hpp"

#include <random>
#include <unordered_map>

#include <fmt/format.h>

#include "actors/cloud_layers.hpp"

namespace ceco {

namespace {

using clock_type = std::chrono::steady_clock;

struct waiting_request {
  int32_t pos;
  clock_type::time_point arrived;
  caf::typed_response_promise<infer_reply> promise;
};

struct session_entry {
  cloud_context_ptr ctx;
  int32_t received = 0;              // positions [0, received) uploaded
  int32_t computed = 0;              // positions [0, computed) caught up
  std::vector<tensor_blob> pending;  // uploaded, not yet sent to catch-up
  bool catching_up = false;
  std::vector<waiting_request> waiting;
  clock_type::time_point last_active;
  int64_t compute_us = 0;
  int64_t gaps = 0;
};

struct context_manager_state {
  cloud_layers_actor layers;
  model_config cfg;
  context_manager_options opts;
  std::unordered_map<uint64_t, session_entry> sessions;
  std::mt19937_64 ids{std::random_device{}()};
  static inline const char* name = "context_manager";
};

using self_ptr = context_manager_actor::stateful_pointer<context_manager_state>;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

caf::error unknown(uint64_t id);

/// The open session `id`, marked active now; nullptr if it is not open.
session_entry* touch(self_ptr self, uint64_t id) {
  auto i = self->state.sessions.find(id);
  if (i == self->state.sessions.end())
    return nullptr;
  i->second.last_active = clock_type::now();
  return &i->second;
}

caf::error unknown(uint64_t id) {
  return make_error(ceco_errc::unknown_session,
                    fmt::format("session {:016x} is not open (never opened, closed, or expired)",
                                id));
}

/// Concatenates blobs of rows into one; mixed dtypes become f32.
tensor_blob merge(std::vector<tensor_blob>& parts) {
  if (parts.size() == 1)
    return std::move(parts.front());
  tensor_blob out;
  out.cols = parts.front().cols;
  bool same = true;
  for (auto& p : parts) {
    out.rows += p.rows;
    same = same && p.dtype == parts.front().dtype;
  }
  if (same) {
    out.dtype = parts.front().dtype;
    for (auto& p : parts)
      out.bytes.insert(out.bytes.end(), p.bytes.begin(), p.bytes.end());
    return out;
  }
  std::vector<float> rows(size_t(out.rows) * size_t(out.cols));
  size_t at = 0;
  for (auto& p : parts) {
    read_blob(p, rows.data() + at);
    at += size_t(p.rows) * size_t(p.cols);
  }
  return make_blob(rows.data(), out.rows, out.cols, wire_dtype::f32);
}

/// Drops the first `n` rows of a blob.
void drop_rows(tensor_blob& b, int32_t n) {
  size_t row_bytes = b.bytes.size() / size_t(b.rows);
  b.bytes.erase(b.bytes.begin(), b.bytes.begin() + std::ptrdiff_t(size_t(n) * row_bytes));
  b.rows -= n;
}

void ask_token(self_ptr self, uint64_t id, waiting_request w) {
  auto& e = self->state.sessions.at(id);
  self->request(self->state.layers, caf::infinite, token_atom::value, e.ctx, w.pos)
    .then(
      [=](infer_reply r) mutable {
        if (auto i = self->state.sessions.find(id); i != self->state.sessions.end())
          i->second.compute_us += r.cloud_us;
        r.cloud_us = us_since(w.arrived);  // time in the cloud, waiting included
        w.promise.deliver(r);
      },
      [=](caf::error& err) mutable { w.promise.deliver(err); });
}

void serve_waiting(self_ptr self, uint64_t id) {
  auto& e = self->state.sessions.at(id);
  std::vector<waiting_request> still;
  std::vector<waiting_request> ready;
  for (auto& w : e.waiting)
    (w.pos < e.computed ? ready : still).push_back(std::move(w));
  e.waiting = std::move(still);
  for (auto& w : ready)
    ask_token(self, id, std::move(w));
}

void fail_waiting(session_entry& e, const caf::error& err) {
  for (auto& w : e.waiting)
    w.promise.deliver(err);
  e.waiting.clear();
}

void catch_up(self_ptr self, uint64_t id) {
  auto& e = self->state.sessions.at(id);
  if (e.catching_up || e.pending.empty())
    return;
  auto batch = merge(e.pending);
  e.pending.clear();
  e.catching_up = true;
  const int32_t start = e.computed;
  const int32_t rows = batch.rows;
  self->request(self->state.layers, caf::infinite, catchup_atom::value, e.ctx, start,
                std::move(batch))
    .then(
      [=](int64_t us) {
        auto i = self->state.sessions.find(id);
        if (i == self->state.sessions.end())
          return;  // closed or expired meanwhile
        i->second.catching_up = false;
        i->second.computed = start + rows;
        i->second.compute_us += us;
        serve_waiting(self, id);
        catch_up(self, id);
      },
      [=](caf::error& err) {
        auto i = self->state.sessions.find(id);
        if (i == self->state.sessions.end())
          return;
        // The session cannot continue consistently: fail what waits on it.
        i->second.catching_up = false;
        fail_waiting(i->second, err);
      });
}

void schedule_sweep(self_ptr self) {
  auto period = std::max(std::chrono::milliseconds(10), self->state.opts.ttl / 4);
  self->delayed_send(self, period, sweep_atom::value);
}

context_manager_actor::behavior_type context_manager_fn(self_ptr self, cloud_layers_actor layers,
                                                        model_config cfg,
                                                        context_manager_options opts) {
  self->state.layers = std::move(layers);
  self->state.cfg = cfg;
  self->state.opts = opts;
  schedule_sweep(self);
  return {
    [=](open_atom) -> caf::result<uint64_t> {
      auto& st = self->state;
      if (int(st.sessions.size()) >= st.opts.max_sessions)
        return make_error(ceco_errc::session_limit,
                          fmt::format("{} sessions are open, the limit is {} (session.max_sessions)",
                                      st.sessions.size(), st.opts.max_sessions));
      auto rp = self->make_response_promise<uint64_t>();
      self->request(st.layers, caf::infinite, open_atom::value)
        .then(
          [=](cloud_context_ptr& ctx) mutable {
            uint64_t id;
            do
              id = self->state.ids();
            while (id == 0 || self->state.sessions.count(id));
            auto& e = self->state.sessions[id];
            e.ctx = std::move(ctx);
            e.last_active = clock_type::now();
            rp.deliver(id);
          },
          [=](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
    [=](upload_msg& m) -> caf::result<int32_t> {
      auto& st = self->state;
      auto* session = touch(self, m.session);
      if (!session)
        return unknown(m.session);
      auto& e = *session;
      if (auto bad = m.states.check(st.cfg.n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor, fmt::format("upload at position {}: {}", m.start, bad));
      if (m.start < 0 || int64_t(m.start) + m.states.rows > st.cfg.max_seq)
        return make_error(ceco_errc::bad_position,
                          fmt::format("upload of positions {}..{} exceeds the context of {}",
                                      m.start, int64_t(m.start) + m.states.rows - 1,
                                      st.cfg.max_seq));
      if (m.start > e.received) {
        ++e.gaps;
        return make_error(ceco_errc::position_gap,
                          fmt::format("upload starts at position {}, but the cloud holds "
                                      "positions 0..{}; re-send from {}",
                                      m.start, e.received - 1, e.received));
      }
      int32_t overlap = e.received - m.start;
      if (overlap >= m.states.rows)
        return e.received;  // a re-send of positions already held
      if (overlap > 0)
        drop_rows(m.states, overlap);
      e.received += m.states.rows;
      e.pending.push_back(std::move(m.states));
      catch_up(self, m.session);
      return e.received;
    },
    [=](infer_request& r) -> caf::result<infer_reply> {
      auto& st = self->state;
      auto* session = touch(self, r.session);
      if (!session)
        return unknown(r.session);
      auto& e = *session;
      if (r.pos < 0 || r.pos >= st.cfg.max_seq)
        return make_error(ceco_errc::bad_position,
                          fmt::format("token after position {} requested; the context holds "
                                      "positions 0..{}", r.pos, st.cfg.max_seq - 1));
      auto rp = self->make_response_promise<infer_reply>();
      waiting_request w{r.pos, clock_type::now(), rp};
      if (r.pos < e.computed)
        ask_token(self, r.session, std::move(w));
      else
        e.waiting.push_back(std::move(w));
      return rp;
    },
    [=](close_atom, uint64_t id) -> caf::result<session_summary> {
      auto& st = self->state;
      auto i = st.sessions.find(id);
      if (i == st.sessions.end())
        return unknown(id);
      session_summary s{id, i->second.computed, i->second.compute_us, i->second.gaps};
      fail_waiting(i->second, make_error(ceco_errc::unknown_session, "the session was closed"));
      st.sessions.erase(i);
      return s;
    },
    [=](stats_atom) -> caf::result<int64_t, int64_t> {
      int64_t bytes = 0;
      for (auto& [id, e] : self->state.sessions)
        bytes += cloud_context_bytes(*e.ctx);
      return {int64_t(self->state.sessions.size()), bytes};
    },
    [=](sweep_atom) {
      auto& st = self->state;
      auto now = clock_type::now();
      for (auto i = st.sessions.begin(); i != st.sessions.end();) {
        if (now - i->second.last_active > st.opts.ttl) {
          fail_waiting(i->second,
                       make_error(ceco_errc::unknown_session, "the session expired (session.ttl_s)"));
          i = st.sessions.erase(i);
        } else {
          ++i;
        }
      }
      schedule_sweep(self);
    },
  };
}

} // namespace

context_manager_actor spawn_context_manager(caf::actor_system& sys, cloud_layers_actor layers,
                                            model_config cfg, context_manager_options opts) {
  return sys.spawn(context_manager_fn, std::move(layers), cfg, opts);
}

} // namespace ceco
