#include "actors/context_manager.hpp"

#include <deque>
#include <unordered_map>

#include <fmt/format.h>

#include "actors/cloud_layers.hpp"
#include "actors/hidden_rows.hpp"
#include "actors/sim_clock.hpp"
#include "net/auth.hpp"

namespace ceco {

namespace {

using clock_type = sim_clock;

struct waiting_request {
  int32_t pos;
  clock_type::time_point arrived;
  caf::typed_response_promise<infer_reply> promise;
};

/// Token requests one session may have waiting for their uploads, and
/// draft uploads waiting for their verdicts: an edge has one request in
/// flight and at most policy.max_draft drafts, so more is a broken or
/// hostile peer.
constexpr size_t max_waiting_requests = 256;

/// A row whose draft the next step verifies: the edge's token after `pos`.
struct draft_check {
  int32_t pos;
  int32_t draft;
};

/// A draft upload waiting for its verdict: decided once [0, end) is computed.
struct awaiting_verdict {
  int32_t end;
  clock_type::time_point arrived;
  caf::typed_response_promise<verdict> promise;
};

struct session_entry {
  cloud_context_ptr ctx;
  int32_t received = 0;              // positions [0, received) uploaded
  int32_t computed = 0;              // positions [0, computed) caught up
  std::vector<int32_t> prompt;       // open_session's prompt, not yet in a step
  int32_t prompt_rows = 0;           // positions [0, prompt_rows) computed from it
  uploaded_rows pending;             // uploaded, not yet in a step (after the prompt)
  std::vector<waiting_request> waiting;  // for positions not yet in a step, at most
                                         // max_waiting_requests
  std::vector<waiting_request> asked;    // answered by the step in flight
  // Speculative and exact: the rollbacks so far, the drafts to verify, and
  // the draft uploads waiting for their verdicts (in position order).
  int32_t epoch = 0;
  std::vector<draft_check> checks;    // rows not yet in a step
  draft_distributions checks_q;       // their drafts' distributions, an entry each
  std::vector<draft_check> checking;  // rows of the step in flight
  std::deque<awaiting_verdict> verdicts;
  bool queued = false;               // in `ready`
  int busy = 0;                      // naive or generate requests at the cloud layers
  sampler_options sampling;          // how its tokens are chosen (open_session)
  clock_type::time_point last_active;
  int64_t compute_us = 0;
  int64_t gaps = 0;
};

struct context_manager_state {
  cloud_layers_actor layers;
  model_config cfg;
  context_manager_options opts;
  std::unordered_map<uint64_t, session_entry> sessions;
  int32_t opening = 0;         // sessions being created, counted against the limits
  uint64_t sweep_number = 0;   // the timer's sweep; any other is ignored
  std::deque<uint64_t> ready;  // sessions with work for the next step, oldest first
  bool stepping = false;       // a step is in flight at the cloud layers
  int64_t steps = 0;
  int64_t stepped_sessions = 0;
  int64_t session_bytes = 0;
  int64_t tokens = 0;
  int64_t refused_limit = 0;
  int64_t refused_memory = 0;
  int64_t expired = 0;
  std::vector<int64_t> step_sizes = std::vector<int64_t>(step_size_buckets, 0);
  int64_t positions = 0;
  static inline const char* name = "context_manager";
};

using self_ptr = context_manager_actor::stateful_pointer<context_manager_state>;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

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

void fail_all(session_entry& e, const caf::error& err) {
  for (auto* list : {&e.waiting, &e.asked}) {
    for (auto& w : *list)
      w.promise.deliver(err);
    list->clear();
  }
  for (auto& v : e.verdicts)
    v.promise.deliver(err);
  e.verdicts.clear();
  e.checks.clear();
  e.checks_q.clear();
  e.checking.clear();
}

/// A rollback: the draft after `wrong` was not the full model's, so every
/// position after it is forgotten; the session's epoch goes up, and what
/// still names a later position (token requests) fails.
void roll_back(session_entry& e, int32_t wrong) {
  const int32_t keep = wrong + 1;
  ++e.epoch;
  e.received = keep;
  e.computed = std::min(e.computed, keep);
  rewind(*e.ctx, keep);
  e.pending.clear();
  e.checks.clear();
  e.checks_q.clear();
  std::vector<waiting_request> still;
  for (auto& w : e.waiting) {
    if (w.pos < keep)
      still.push_back(std::move(w));
    else
      w.promise.deliver(make_error(ceco_errc::bad_position,
                                   fmt::format("position {} was rolled back (the draft after "
                                               "position {} was corrected)", w.pos, wrong)));
  }
  e.waiting = std::move(still);
}

/// Answers the draft uploads whose rows are computed, oldest first: accepted
/// up to the row whose draft was wrong (if any), corrected for the upload
/// holding it (after a rollback), stale for every later one.
void settle_verdicts(session_entry& e, int32_t wrong, int32_t cloud_token) {
  while (!e.verdicts.empty()) {
    auto& v = e.verdicts.front();
    if (wrong >= 0 && v.end > wrong) {
      roll_back(e, wrong);
      v.promise.deliver(verdict{uint8_t(verdict_outcome::corrected), e.epoch, wrong, cloud_token,
                                us_since(v.arrived)});
      e.verdicts.pop_front();
      for (auto& later : e.verdicts)
        later.promise.deliver(
          verdict{uint8_t(verdict_outcome::stale), e.epoch, -1, 0, us_since(later.arrived)});
      e.verdicts.clear();
      return;
    }
    // Its rows computed and its drafts checked: a draft on a row the cloud
    // computed from the prompt is checked in a step after that row's.
    const auto before = [&](const std::vector<draft_check>& c) {
      return !c.empty() && c.front().pos < v.end;
    };
    if (v.end > e.computed || before(e.checks) || before(e.checking))
      return;
    v.promise.deliver(
      verdict{uint8_t(verdict_outcome::accepted), e.epoch, -1, 0, us_since(v.arrived)});
    e.verdicts.pop_front();
  }
}

/// Whether the next step has something to do for `e`: uploads to catch up
/// on, or a request whose position is uploaded.
bool has_work(const session_entry& e) {
  // Drafts may wait on rows the cloud computed from the prompt alone.
  if (e.pending.rows > 0 || !e.prompt.empty() || !e.checks.empty())
    return true;
  for (auto& w : e.waiting)
    if (w.pos < e.received)
      return true;
  return false;
}

void dispatch(self_ptr self);

/// Whether a token request or a draft of `e` is after a row computed in an
/// earlier step.
bool answerable_now(const session_entry& e) {
  for (auto& c : e.checks)
    if (c.pos < e.computed)
      return true;
  for (auto& w : e.waiting)
    if (w.pos < e.computed)
      return true;
  return false;
}

/// Empty when each draft sent with its distribution is among its
/// candidates with a weight, and no row without a draft has one; else what
/// is wrong.
std::string drafts_among_candidates(const draft_upload& m) {
  size_t at = 0;
  for (size_t i = 0; i < m.q.counts.size(); ++i) {
    const auto n = size_t(m.q.counts[i]);
    if (n > 0 && m.drafts[i] < 0)
      return fmt::format("row {} has no draft but a draft distribution of {} candidates", i, n);
    bool found = n == 0;
    for (size_t j = at; j < at + n; ++j)
      found = found || (m.q.tokens[j] == m.drafts[i] && m.q.weights[j] > 0.0f);
    if (!found)
      return fmt::format("row {}'s draft {} is not among its {} candidates", i, m.drafts[i], n);
    at += n;
  }
  return {};
}

/// The session ends (closed or expired): whoever listens is told.
void ended(self_ptr self, uint64_t id) {
  // A streamed generation of the session (cloud strategy) is dropped.
  if (self->state.layers)
    self->send(self->state.layers, close_atom::value, id);
  if (self->state.opts.on_end)
    (*self->state.opts.on_end)(id);
}

/// A naive or generate request of an open session, computed by the cloud
/// layers: the session stays alive (never expires) until it is answered.
template <class Reply, class Request>
caf::result<Reply> hand_to_layers(self_ptr self, uint64_t id, Request&& req) {
  auto* session = touch(self, id);
  if (!session)
    return unknown(id);
  ++session->busy;
  auto rp = self->make_response_promise<Reply>();
  auto done = [self, id] {
    if (auto* s = touch(self, id))  // closed meanwhile: nothing to keep alive
      --s->busy;
  };
  self->request(self->state.layers, caf::infinite, std::forward<Request>(req))
    .then(
      [=](Reply& r) mutable {
        done();
        rp.deliver(std::move(r));
      },
      [=](caf::error& err) mutable {
        done();
        rp.deliver(std::move(err));
      });
  return rp;
}

void mark_ready(self_ptr self, uint64_t id, session_entry& e) {
  if (!e.queued && has_work(e)) {
    e.queued = true;
    self->state.ready.push_back(id);
  }
  dispatch(self);
}

void step_done(self_ptr self, const std::vector<uint64_t>& ids,
               const std::vector<int32_t>& targets, cloud_step_done& r) {
  auto& st = self->state;
  st.stepping = false;
  const int64_t share = r.compute_us / int64_t(std::max<size_t>(1, ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = st.sessions.find(ids[i]);
    if (it == st.sessions.end())
      continue;  // closed or expired meanwhile; its requests were failed then
    auto& e = it->second;
    auto& done = r.done[i];
    if (done.error) {
      // The session cannot continue consistently: fail what waits on it.
      fail_all(e, done.error);
      continue;
    }
    st.positions += targets[i] - e.computed;
    st.tokens += int64_t(e.asked.size());
    e.computed = targets[i];
    e.compute_us += share;
    size_t j = 0;
    for (; j < e.asked.size(); ++j) {
      auto& w = e.asked[j];
      w.promise.deliver(infer_reply{done.tokens[j], us_since(w.arrived)});
    }
    e.asked.clear();
    // The drafts of the step, in position order: the first the full model
    // disagrees with is corrected, and everything after it rolled back.
    int32_t wrong = -1, cloud_token = 0;
    for (auto& c : e.checking) {
      const int32_t t = done.tokens[j++];
      if (t != c.draft) {
        wrong = c.pos;
        cloud_token = t;
        break;
      }
    }
    e.checking.clear();
    settle_verdicts(e, wrong, cloud_token);
    if (!e.queued && has_work(e)) {
      e.queued = true;
      st.ready.push_back(ids[i]);
    }
  }
  dispatch(self);
}

/// Sends the work of up to `batch_sessions` ready sessions to the cloud
/// layers as one step, unless a step is in flight: whatever arrives
/// meanwhile goes into the next one, so steps grow with the load.
void dispatch(self_ptr self) {
  auto& st = self->state;
  if (st.stepping)
    return;
  cloud_step step;
  std::vector<uint64_t> ids;
  std::vector<int32_t> targets;  // positions computed once the step is done
  while (!st.ready.empty() && int(ids.size()) < st.opts.batch_sessions) {
    auto id = st.ready.front();
    st.ready.pop_front();
    auto it = st.sessions.find(id);
    if (it == st.sessions.end())
      continue;
    auto& e = it->second;
    e.queued = false;
    if (!has_work(e))
      continue;
    cloud_work w;
    w.ctx = e.ctx;
    w.start = e.computed;
    // Tokens after rows computed in earlier steps (a draft on the prompt's
    // last row, which the cloud computed from the prompt's ids) take a
    // classifier row each: they are answered in a step of their own rather
    // than after the layers over rows that came meanwhile, which wait for
    // the next step.
    const bool answer_first = (e.pending.rows > 0 || !e.prompt.empty()) && answerable_now(e);
    const int32_t answerable = answer_first ? e.computed : e.received;
    if (!answer_first) {
      w.prompt = std::move(e.prompt);
      e.prompt.clear();
      // The step takes the upload blobs as they came; the cloud layers
      // decode them straight into their input.
      w.states = std::move(e.pending);
      e.pending.clear();
    }
    w.states.cols = st.cfg.n_embd;
    std::vector<waiting_request> later;
    for (auto& r : e.waiting) {
      if (r.pos < answerable) {
        w.tokens_after.push_back(r.pos);
        w.drafts.push_back(-1);
        e.asked.push_back(std::move(r));
      } else {
        later.push_back(std::move(r));
      }
    }
    e.waiting = std::move(later);
    // The checks of this step (position order) and their drafts'
    // distributions: all of them, but those after rows not yet computed
    // when the step answers first.
    auto checks = std::move(e.checks);
    auto checks_q = std::move(e.checks_q);
    e.checks.clear();
    e.checks_q.clear();
    if (answer_first) {
      std::vector<draft_check> now;
      draft_distributions now_q;
      for (size_t i = 0; i < checks.size(); ++i) {
        const bool answered = checks[i].pos < answerable;
        (answered ? now : e.checks).push_back(checks[i]);
        (answered ? now_q : e.checks_q).append(checks_q, i);
      }
      checks = std::move(now);
      checks_q = std::move(now_q);
    }
    if (!checks.empty()) {
      // The token requests' entries first (no draft), then the checks'.
      w.q = std::move(checks_q);
      w.q.counts.insert(w.q.counts.begin(), w.tokens_after.size(), 0);
    }
    for (auto& c : checks) {
      w.tokens_after.push_back(c.pos);
      w.drafts.push_back(c.draft);
    }
    w.sampling = e.sampling;
    e.checking = std::move(checks);
    ids.push_back(id);
    targets.push_back(e.computed + w.rows());
    step.work.push_back(std::move(w));
  }
  if (ids.empty())
    return;
  st.stepping = true;
  ++st.steps;
  st.stepped_sessions += int64_t(ids.size());
  ++st.step_sizes[size_t(step_size_bucket(int64_t(ids.size())))];
  self->request(st.layers, caf::infinite, std::move(step))
    .then([=](cloud_step_done& r) { step_done(self, ids, targets, r); },
          [=](caf::error& err) {
            cloud_step_done r;
            r.done.resize(ids.size());
            for (auto& d : r.done)
              d.error = err;
            step_done(self, ids, targets, r);
          });
}

int64_t held_bytes(const context_manager_state& st) {
  int64_t bytes = 0;
  for (auto& [id, e] : st.sessions)
    bytes += cloud_context_bytes(*e.ctx);
  return bytes;
}

void schedule_sweep(self_ptr self) {
  auto period = std::max(std::chrono::milliseconds(10), self->state.opts.ttl / 4);
  self->delayed_send(self, period, sweep_atom::value, ++self->state.sweep_number);
}

context_manager_actor::behavior_type context_manager_fn(self_ptr self, cloud_layers_actor layers,
                                                        model_config cfg,
                                                        context_manager_options opts) {
  self->state.layers = std::move(layers);
  self->state.cfg = cfg;
  self->state.opts = opts;
  schedule_sweep(self);
  return {
    [=](open_session& open) -> caf::result<uint64_t> {
      auto& st = self->state;
      const auto sampling = sampler_of(open.sampling);
      if (int64_t(open.prompt.size()) >= st.cfg.max_seq)
        return make_error(ceco_errc::bad_position,
                          fmt::format("open_session: a prompt of {} tokens; the context of {} "
                                      "holds at most {}, leaving room for a generated token",
                                      open.prompt.size(), st.cfg.max_seq, st.cfg.max_seq - 1));
      for (size_t i = 0; i < open.prompt.size(); ++i)
        if (open.prompt[i] < 0 || open.prompt[i] >= st.cfg.vocab_size)
          return make_error(ceco_errc::bad_tensor,
                            fmt::format("open_session: prompt token {} is id {}; the vocabulary "
                                        "holds 0..{}", i, open.prompt[i], st.cfg.vocab_size - 1));
      // Sessions still being created count: the limit holds however many
      // opens arrive before the first is answered.
      if (int64_t(st.sessions.size()) + st.opening >= st.opts.max_sessions) {
        ++st.refused_limit;
        return make_error(ceco_errc::session_limit,
                          fmt::format("{} sessions are open, the limit is {} (session.max_sessions)",
                                      int64_t(st.sessions.size()) + st.opening,
                                      st.opts.max_sessions));
      }
      ++st.opening;
      auto rp = self->make_response_promise<uint64_t>();
      self->request(st.layers, caf::infinite, open_atom::value)
        .then(
          [=](cloud_context_ptr& ctx) mutable {
            auto& st = self->state;
            --st.opening;
            if (st.opts.max_context_bytes > 0) {
              auto held = held_bytes(st);
              auto more = cloud_context_bytes(*ctx);
              if (held + more > st.opts.max_context_bytes) {
                ++st.refused_memory;
                rp.deliver(make_error(
                  ceco_errc::session_limit,
                  fmt::format("a new session needs {:.1f} MiB of cloud memory, {:.1f} of {:.1f} MiB "
                              "are held by {} sessions (session.max_memory_mb)",
                              double(more) / 1048576, double(held) / 1048576,
                              double(st.opts.max_context_bytes) / 1048576, st.sessions.size())));
                return;
              }
            }
            st.session_bytes = cloud_context_bytes(*ctx);
            // Unpredictable from earlier ids: a session's id is all a request names.
            uint64_t id;
            do
              id = wire::random_session_id();
            while (self->state.sessions.count(id));
            auto& e = self->state.sessions[id];
            e.ctx = std::move(ctx);
            e.sampling = sampling;
            e.last_active = clock_type::now();
            // The prompt's rows are computed at once, while the reply
            // travels and the edge computes its own.
            e.received = int32_t(open.prompt.size());
            e.prompt_rows = e.received;
            e.prompt = std::move(open.prompt);
            rp.deliver(id);
            mark_ready(self, id, e);
          },
          [=](caf::error& err) mutable {
            --self->state.opening;
            rp.deliver(err);
          });
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
      e.pending.append(std::move(m.states));
      mark_ready(self, m.session, e);
      return e.received;
    },
    [=](draft_upload& m) -> caf::result<verdict> {
      auto& st = self->state;
      auto* session = touch(self, m.session);
      if (!session)
        return unknown(m.session);
      auto& e = *session;
      if (m.epoch != e.epoch)  // sent before a rollback: never computed over
        return verdict{uint8_t(verdict_outcome::stale), e.epoch, -1, 0, 0};
      if (auto bad = m.states.check(st.cfg.n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor,
                          fmt::format("draft upload at position {}: {}", m.start, bad));
      if (int64_t(m.drafts.size()) != m.states.rows)
        return make_error(ceco_errc::bad_tensor,
                          fmt::format("draft upload at position {}: {} drafts for {} rows "
                                      "(expected one per row)", m.start, m.drafts.size(),
                                      m.states.rows));
      for (size_t i = 0; i < m.drafts.size(); ++i)
        if (m.drafts[i] < -1 || m.drafts[i] >= st.cfg.vocab_size)
          return make_error(ceco_errc::bad_tensor,
                            fmt::format("draft upload: drafts[{}] is {}; expected -1 (none) or a "
                                        "token id 0..{}", i, m.drafts[i], st.cfg.vocab_size - 1));
      if (auto bad = m.q.check(m.drafts.size(), st.cfg.vocab_size); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "draft upload: " + bad);
      if (auto bad = drafts_among_candidates(m); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "draft upload: " + bad);
      // Rows the cloud computed from the open's prompt, and nothing after
      // them yet: an upload may begin inside them (the edge's first, whose
      // last prompt row carries its draft); the cloud keeps its own rows.
      const bool over_prompt = m.start < e.received && e.received == e.prompt_rows &&
                               int64_t(m.start) + m.states.rows >= e.received;
      if ((m.start != e.received && !over_prompt) ||
          int64_t(m.start) + m.states.rows > st.cfg.max_seq) {
        if (m.start > e.received)
          ++e.gaps;
        return make_error(m.start > e.received ? ceco_errc::position_gap : ceco_errc::bad_position,
                          fmt::format("draft upload of positions {}..{}: the cloud holds "
                                      "positions 0..{} of a context of {}; drafts continue at {}",
                                      m.start, int64_t(m.start) + m.states.rows - 1,
                                      e.received - 1, st.cfg.max_seq, e.received));
      }
      if (e.verdicts.size() >= max_waiting_requests)
        return make_error(ceco_errc::session_limit,
                          fmt::format("{} draft uploads of this session already wait for their "
                                      "verdicts, the limit is {}", e.verdicts.size(),
                                      max_waiting_requests));
      for (int32_t i = 0; i < m.states.rows; ++i)
        if (m.drafts[size_t(i)] >= 0) {
          e.checks.push_back({m.start + i, m.drafts[size_t(i)]});
          e.checks_q.append(m.q, size_t(i));
        }
      auto rp = self->make_response_promise<verdict>();
      e.verdicts.push_back({m.start + m.states.rows, clock_type::now(), rp});
      if (const int32_t held = e.received - m.start; held > 0)
        drop_rows(m.states, held);
      e.received += m.states.rows;
      if (m.states.rows > 0)
        e.pending.append(std::move(m.states));
      // Nothing to compute or check (a row the cloud holds, without a
      // draft): answered now, as no step would.
      settle_verdicts(e, -1, 0);
      mark_ready(self, m.session, e);
      return rp;
    },
    [=](get_atom, uint64_t id) -> caf::result<cloud_context_ptr> {
      auto i = self->state.sessions.find(id);
      if (i == self->state.sessions.end())
        return unknown(id);
      return i->second.ctx;
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
      if (e.waiting.size() >= max_waiting_requests)
        return make_error(ceco_errc::session_limit,
                          fmt::format("{} token requests of this session are already waiting "
                                      "for their uploads, the limit is {}",
                                      e.waiting.size(), max_waiting_requests));
      auto rp = self->make_response_promise<infer_reply>();
      e.waiting.push_back(waiting_request{r.pos, clock_type::now(), rp});
      mark_ready(self, r.session, e);
      return rp;
    },
    [=](close_session& c) -> caf::result<session_summary> {
      auto& st = self->state;
      const uint64_t id = c.session;
      auto i = st.sessions.find(id);
      if (i == st.sessions.end())
        return unknown(id);
      session_summary s{id, i->second.computed, i->second.compute_us, i->second.gaps};
      fail_all(i->second, make_error(ceco_errc::unknown_session, "the session was closed"));
      st.sessions.erase(i);
      ended(self, id);
      return s;
    },
    [=](naive_request& r) -> caf::result<infer_reply> {
      const auto id = r.session;
      auto* session = touch(self, id);
      if (!session)
        return unknown(id);
      const auto sampling = session->sampling;
      return hand_to_layers<infer_reply>(self, id, naive_work{std::move(r), sampling});
    },
    [=](generate_request& r) -> caf::result<generate_reply> {
      const auto id = r.session;
      return hand_to_layers<generate_reply>(self, id, std::move(r));
    },
    [=](evaluate_request& r) -> caf::result<exit_decision> {
      if (!touch(self, r.session))
        return unknown(r.session);
      if (!self->state.opts.evaluator)
        return make_error(ceco_errc::not_placed_here,
                          "the exit evaluator runs on the edge (placement.exit_evaluator = \"edge\")");
      return self->delegate(self->state.opts.evaluator, std::move(r));
    },
    [=](stats_atom) -> cloud_stats {
      auto& st = self->state;
      return {int64_t(st.sessions.size()), held_bytes(st), st.steps, st.stepped_sessions,
              st.session_bytes, st.tokens, st.positions, st.refused_limit, st.refused_memory,
              st.expired, st.step_sizes};
    },
    [=](sweep_atom, uint64_t number) {
      auto& st = self->state;
      if (number != st.sweep_number)
        return;
      auto now = clock_type::now();
      for (auto i = st.sessions.begin(); i != st.sessions.end();) {
        // A session whose generation is still at the cloud layers is in use.
        const auto& e = i->second;
        const bool in_use = e.busy > 0 || !e.asked.empty() || !e.checking.empty();
        if (!in_use && now - e.last_active > st.opts.ttl) {
          fail_all(i->second,
                   make_error(ceco_errc::unknown_session, "the session expired (session.ttl_s)"));
          const auto id = i->first;
          i = st.sessions.erase(i);
          ++st.expired;
          ended(self, id);
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
