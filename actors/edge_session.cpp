#include "actors/edge_session.hpp"

#include <algorithm>
#include <random>

#include <fmt/format.h>

#include "actors/draft_window.hpp"
#include "actors/hidden_rows.hpp"
#include "actors/sim_clock.hpp"

namespace ceco {

namespace {
constexpr strategy all_strategies[] = {strategy::cloud,         strategy::naive,
                                       strategy::standalone,    strategy::collaborative,
                                       strategy::speculative,   strategy::exact};
} // namespace

std::optional<strategy> parse_strategy(std::string_view name) {
  for (auto s : all_strategies)
    if (name == to_string(s))
      return s;
  return std::nullopt;
}

const char* to_string(strategy s) {
  switch (s) {
    case strategy::cloud: return "cloud";
    case strategy::naive: return "naive";
    case strategy::standalone: return "standalone";
    case strategy::collaborative: return "collaborative";
    case strategy::speculative: return "speculative";
    case strategy::exact: return "exact";
  }
  return "unknown";
}

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (auto s : all_strategies)
      out.emplace_back(to_string(s));
    return out;
  }();
  return names;
}

const char* to_string(phase p) {
  switch (p) {
    case phase::idle: return "idle";
    case phase::opening: return "opening";
    case phase::running: return "running";
    case phase::degraded: return "degraded";
    case phase::resuming: return "resuming";
    case phase::closing: return "closing";
    case phase::reporting: return "reporting";
  }
  return "unknown";
}

bool phase_transition_allowed(phase from, phase to) {
  switch (from) {
    case phase::idle: return to == phase::opening || to == phase::running;
    case phase::opening:
      return to == phase::running || to == phase::degraded || to == phase::closing;
    case phase::running: return to == phase::degraded || to == phase::closing;
    case phase::degraded: return to == phase::resuming || to == phase::closing;
    case phase::resuming:
      return to == phase::running || to == phase::degraded || to == phase::closing;
    case phase::closing: return to == phase::reporting;
    case phase::reporting: return false;
  }
  return false;
}

namespace {

using clock_type = sim_clock;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

struct edge_session_state {
  edge_site site;
  edge_session_options opts;
  phase at = phase::idle;  // changed by transition() only
  response_report report;
  caf::typed_response_promise<response_report> promise;
  uint64_t session = 0;                  // the current cloud session
  uint64_t edge_id = 0;                  // the edge layers' cache for this response
  std::vector<uint64_t> cloud_sessions;  // every one this response opened
  int64_t link_epoch = 0;                // the link's epoch when the cloud session opened
  int32_t pos = 0;                       // next position the edge computes
  std::vector<int32_t> input;            // tokens of the next edge step
  // Every split state so far: naive sends them all each token;
  // collaborative re-uploads them to a new cloud session after a loss.
  hidden_rows context;
  int32_t uploads_in_flight = 0;
  int32_t opens_in_flight = 0;  // a cancelled session waits for them to close what they open
  clock_type::time_point started;
  int32_t fallback_token = 0;  // the deepest exit's token for the current position
  std::vector<int64_t> token_us;  // when each final token was seen, from `started`
  // Speculative and exact (see draft_window.hpp):
  draft_window window;
  int32_t epoch = 0;           // rollbacks so far; results of an older one are dropped
  bool computing = false;      // an edge step (layers, exit evaluation) is in flight
  bool stalled = false;        // waiting for verdicts: the window is full, or all is drafted
  clock_type::time_point stalled_since;
  static inline const char* name = "edge_session";

  bool is(strategy s) const { return opts.mode == s; }
  bool drafting() const { return is(strategy::speculative) || is(strategy::exact); }
  /// Collaborates with the cloud token by token (and so can lose it and resume).
  bool token_by_token() const { return is(strategy::collaborative) || drafting(); }
  bool degraded() const { return at == phase::degraded || at == phase::resuming; }
  bool finished() const { return at == phase::closing || at == phase::reporting; }
};

using self_ptr = edge_session_actor::stateful_pointer<edge_session_state>;

/// Moves the session to `to` along an edge of the diagram in
/// edge_session.hpp, recording it in the report; an edge the diagram does not
/// have is refused (the phase stays, and the report names the edge), so a
/// session can never be in two minds about where it is.
void transition(self_ptr self, phase to) {
  auto& st = self->state;
  if (st.at == to)
    return;
  if (!phase_transition_allowed(st.at, to)) {
    if (st.report.error.empty())
      st.report.error = fmt::format("internal: the session tried to go from {} to {}, which "
                                    "the phase diagram does not allow", to_string(st.at),
                                    to_string(to));
    fmt::print(stderr, "ceco: {}\n", st.report.error);
    return;
  }
  st.at = to;
  st.report.phases.emplace_back(to_string(to));
}

void step(self_ptr self);
void forward(self_ptr self);
void draft_forward(self_ptr self);
void draft_step(self_ptr self);
/// The next edge step of the strategy's token loop.
void advance(self_ptr self) {
  if (self->state.drafting())
    return draft_forward(self);
  forward(self);
}
/// Starts (or continues) the token loop.
void loop(self_ptr self) {
  if (self->state.drafting())
    return draft_step(self);
  step(self);
}
void finish(self_ptr self, const std::string& error = {});
void evaluate(self_ptr self, std::shared_ptr<tensor_blob> states, int32_t last);
void generate_in_cloud(self_ptr self);
void close_cloud(self_ptr self);
void collect_traffic(self_ptr self, size_t i = 0);

/// A token the user sees (final): appended to the response, its time
/// recorded, and streamed to the token sink with the exit layer that chose
/// it (-1: the cloud) and the round trip of the cloud request that answered
/// it (-1: none).
void show_token(self_ptr self, int32_t token, int32_t exit_layer, int64_t cloud_rtt_us = -1) {
  auto& st = self->state;
  st.report.tokens.push_back(token);
  st.token_us.push_back(us_since(st.started));
  if (st.opts.token_sink)
    caf::anon_send(st.opts.token_sink, token_atom::value, token, exit_layer, cloud_rtt_us);
}

/// Round trip minus the time the cloud reports: the network's share.
void account_round_trip(self_ptr self, clock_type::time_point sent, int64_t cloud_us) {
  auto rtt = us_since(sent);
  self->state.report.cloud_us += cloud_us;
  self->state.report.comm_us += std::max<int64_t>(0, rtt - cloud_us);
}

/// The cloud is out of reach: the response goes on on the edge alone.
void lose_cloud(self_ptr self, clock_type::time_point sent) {
  transition(self, phase::degraded);
  self->state.report.comm_us += us_since(sent);
}

// -- opening ---------------------------------------------------------------------

void opened(self_ptr self, uint64_t id, clock_type::time_point sent) {
  auto& st = self->state;
  st.session = id;
  st.cloud_sessions.push_back(id);
  st.report.comm_us += us_since(sent);
}

/// An open answered after the response was cancelled: the session it
/// opened (if any) is closed like any other, then the report goes out.
void opened_after_finish(self_ptr self, std::optional<uint64_t> id,
                         clock_type::time_point sent) {
  if (id)
    opened(self, *id, sent);
  if (self->state.uploads_in_flight == 0)
    id ? close_cloud(self) : collect_traffic(self);
}

/// Opens a cloud session: `on_open` runs once it is open, `on_error` with
/// the error; a response that finished meanwhile closes what it opened.
template <class OnOpen, class OnError>
void request_session(self_ptr self, clock_type::time_point sent, OnOpen on_open,
                     OnError on_error) {
  auto& st = self->state;
  ++st.opens_in_flight;
  self->request(st.site.cloud, st.opts.timeout, open_atom::value)
    .then(
      [=](uint64_t id) {
        --self->state.opens_in_flight;
        if (self->state.finished())
          return opened_after_finish(self, id, sent);
        opened(self, id, sent);
        on_open();
      },
      [=](caf::error& err) {
        --self->state.opens_in_flight;
        if (self->state.finished())
          return opened_after_finish(self, std::nullopt, sent);
        on_error(err);
      });
}

void open_cloud(self_ptr self) {
  auto sent = clock_type::now();
  request_session(
    self, sent,
    [=] {
      if (self->state.is(strategy::cloud))
        return generate_in_cloud(self);
      transition(self, phase::running);
      loop(self);
    },
    [=](const caf::error& err) {
      auto& st = self->state;
      if (st.token_by_token() && st.site.link && is(err, ceco_errc::cloud_unreachable)) {
        // Start on the edge alone; the response resumes collaboratively
        // if the link reconnects while it runs.
        lose_cloud(self, sent);
        fmt::print(stderr, "ceco: the cloud is unreachable; starting on the edge alone\n");
        return loop(self);
      }
      finish(self, "open session: " + describe(err));
    });
}

void start(self_ptr self) {
  auto& st = self->state;
  st.started = clock_type::now();
  st.input = st.opts.prompt;
  st.window = draft_window(st.opts.prompt);
  st.edge_id = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
  if (st.is(strategy::standalone)) {
    transition(self, phase::running);
    return step(self);
  }
  transition(self, phase::opening);
  if (!st.site.link)
    return open_cloud(self);
  // The link's epoch now: a reconnection later is what lets a session that
  // lost the cloud resume.
  self->request(st.site.link, st.opts.timeout, status_atom::value)
    .then(
      [=](int64_t epoch) {
        self->state.link_epoch = epoch;
        open_cloud(self);
      },
      [=](caf::error&) { open_cloud(self); });
}

// -- the cloud strategy: open ─▶ generate ─▶ close ---------------------------------

void generate_in_cloud(self_ptr self) {
  auto& st = self->state;
  transition(self, phase::running);
  auto sent = clock_type::now();
  self->request(st.site.cloud, st.opts.timeout,
                generate_request{st.session, st.opts.prompt, st.opts.max_tokens})
    .then(
      [=](generate_reply& r) {
        auto& report = self->state.report;
        account_round_trip(self, sent, r.cloud_us);
        for (size_t i = 0; i < r.tokens.size(); ++i)  // not streamed: all come with the reply
          show_token(self, r.tokens[i], -1, i == 0 ? us_since(sent) : int64_t(-1));
        report.cloud_tokens = int32_t(report.tokens.size());
        report.cloud_requests = 1;
        finish(self);
      },
      [=](caf::error& err) { finish(self, "cloud generate: " + describe(err)); });
}

// -- the token loop: naive, standalone, collaborative --------------------------------

/// `cloud_rtt_us`: the round trip of the cloud request that answered the
/// token, -1 for an exit's token.
void emit(self_ptr self, int32_t token, int exit_index, int64_t cloud_rtt_us = -1) {
  auto& st = self->state;
  if (st.finished())
    return;
  if (token == st.opts.eos)
    return finish(self);
  show_token(self, token, exit_index >= 0 ? int32_t(st.opts.exits[size_t(exit_index)]) : -1,
             cloud_rtt_us);
  if (st.degraded())
    ++st.report.degraded_tokens;
  if (exit_index >= 0)
    ++st.report.exit_counts[size_t(exit_index)];
  else
    ++st.report.cloud_tokens;
  if (int(st.report.tokens.size()) >= st.opts.max_tokens || st.pos >= st.opts.max_seq)
    return finish(self);
  st.input.assign(1, token);
  step(self);
}

int exit_index_of(const edge_session_state& st, int32_t layer) {
  for (size_t i = 0; i < st.opts.exits.size(); ++i)
    if (st.opts.exits[i] == layer)
      return int(i);
  return int(st.opts.exits.size()) - 1;  // standalone fallback: the deepest exit
}

/// Naive: every split state so far, f32, for the cloud to recompute over.
void ask_naive(self_ptr self) {
  auto& st = self->state;
  ++st.report.cloud_requests;
  naive_request req{st.session, st.context.encode(wire_dtype::f32)};
  auto sent = clock_type::now();
  self->request(st.site.cloud, st.opts.timeout, std::move(req))
    .then(
      [=](infer_reply& r) {
        account_round_trip(self, sent, r.cloud_us);
        emit(self, r.token, -1, us_since(sent));
      },
      [=](caf::error& err) { finish(self, "naive request: " + describe(err)); });
}

/// Collaborative, no exit fired: the cloud's token for position `last`.
void ask_cloud(self_ptr self, int32_t last) {
  auto& st = self->state;
  ++st.report.cloud_requests;
  auto sent = clock_type::now();
  self->request(st.site.cloud, st.opts.timeout, infer_request{st.session, last})
    .then(
      [=](infer_reply& r) {
        // The cloud's time here is time it held the request (waiting on
        // uploads included); its compute comes from the session summary.
        const auto rtt = us_since(sent);
        self->state.report.comm_us += std::max<int64_t>(0, rtt - r.cloud_us);
        emit(self, r.token, -1, rtt);
      },
      [=](caf::error& err) {
        if (self->state.finished())
          return;
        // The cloud is gone or not answering: go on on the edge alone, as
        // standalone would, until the link reconnects (see step).
        lose_cloud(self, sent);
        fmt::print(stderr, "ceco: cloud request failed ({}); continuing on the edge alone\n",
                   describe(err));
        auto& st = self->state;
        emit(self, st.fallback_token, int(st.opts.exits.size()) - 1);
      });
}

/// Asks the exit evaluator about the position `last`: the placed one, or
/// the edge's own for standalone and after the cloud was lost.
void evaluate(self_ptr self, std::shared_ptr<tensor_blob> states, int32_t last) {
  auto& st = self->state;
  const bool local = st.is(strategy::standalone) || st.degraded() || !st.site.local_evaluator
                     || st.site.evaluator == st.site.local_evaluator;
  auto evaluator = local && st.site.local_evaluator ? st.site.local_evaluator : st.site.evaluator;
  auto sent = clock_type::now();
  // Kept for a retry on the edge only when the evaluator is remote.
  auto payload = local ? std::move(*states) : *states;
  self->request(evaluator, st.opts.timeout, evaluate_atom::value, st.session, std::move(payload))
    .then(
      [=](exit_decision& d) {
        auto& st = self->state;
        if (st.finished())
          return;
        if (local)
          st.report.edge_us += d.compute_us;
        else
          account_round_trip(self, sent, d.compute_us);  // evaluated on the cloud
        if (st.is(strategy::standalone) || st.degraded() || d.exit_layer >= 0)
          return emit(self, d.token, exit_index_of(st, d.exit_layer));
        st.fallback_token = d.token;
        ask_cloud(self, last);
      },
      [=](caf::error& err) {
        if (self->state.finished())
          return;
        if (local)
          return finish(self, "exit evaluator: " + describe(err));
        // The evaluator on the cloud is out of reach: continue on the edge.
        lose_cloud(self, sent);
        fmt::print(stderr, "ceco: exit evaluation on the cloud failed ({}); continuing on the "
                           "edge alone\n", describe(err));
        evaluate(self, states, last);
      });
}

/// Counts an upload as acknowledged (or failed); the last one lets a
/// finished response close its cloud session.
void upload_settled(self_ptr self) {
  auto& st = self->state;
  --st.uploads_in_flight;
  if (st.at == phase::closing && st.uploads_in_flight == 0 && st.opens_in_flight == 0)
    close_cloud(self);
}

void upload(self_ptr self, const tensor_blob& split, int32_t start, std::function<void()> next) {
  auto& st = self->state;
  ++st.report.uploads;
  st.report.uploaded_positions += split.rows;
  ++st.uploads_in_flight;
  auto sent = clock_type::now();
  auto h = self->request(st.site.uploader, st.opts.timeout, upload_atom::value, st.session, start,
                         split);
  if (!st.opts.sync_upload) {
    // Asynchronous: the token loop goes on at once; the ack only settles
    // the count. A lost upload surfaces as the failure of the cloud request
    // that needs it, which switches the session to the edge alone.
    h.then([=](int32_t) { upload_settled(self); }, [=](caf::error&) { upload_settled(self); });
    next();
    return;
  }
  h.then(
    [=](int32_t) {
      --self->state.uploads_in_flight;
      self->state.report.comm_us += us_since(sent);
      next();
    },
    [=](caf::error& err) {
      --self->state.uploads_in_flight;
      finish(self, "upload: " + describe(err));
    });
}

/// The edge layers over the next input; then the strategy's decision.
void forward(self_ptr self) {
  auto& st = self->state;
  const int32_t start = st.pos;
  const auto n = int32_t(st.input.size());
  self->request(st.site.layers, st.opts.timeout, forward_atom::value, st.edge_id, start, st.input)
    .then(
      [=](edge_output& out) {
        auto& st = self->state;
        if (st.finished())
          return;
        st.report.edge_us += out.compute_us;
        st.pos = start + n;
        const int32_t last = start + n - 1;
        if (st.is(strategy::naive) || (st.is(strategy::collaborative) && st.site.link))
          st.context.append(out.split);
        if (st.is(strategy::naive))
          return ask_naive(self);
        if (st.is(strategy::collaborative) && !st.degraded()) {
          auto shared = std::make_shared<edge_output>(std::move(out));
          upload(self, shared->split, start, [=] {
            evaluate(self, std::make_shared<tensor_blob>(std::move(shared->exit_states)), last);
          });
          return;
        }
        evaluate(self, std::make_shared<tensor_blob>(std::move(out.exit_states)), last);
      },
      [=](caf::error& err) { finish(self, "edge layers: " + describe(err)); });
}

// -- speculative and exact: drafts ahead of the cloud's verdicts --------------------

/// Shows the tokens that became final since the last call. True when that
/// ended the response (a final end of sequence, or max_tokens).
bool show_final(self_ptr self) {
  auto& st = self->state;
  const auto& w = st.window;
  for (int32_t i = w.prompt_size() + int32_t(st.report.tokens.size()); i < w.final_size(); ++i) {
    const int32_t token = w.sequence()[size_t(i)];
    if (token == st.opts.eos) {
      finish(self);
      return true;
    }
    // A confident exit's token counts for its exit; an uncertain draft the
    // cloud accepted, or its correction, is the cloud's token (as in
    // collaborative).
    const int origin = w.origin(i);
    show_token(self, token, origin >= 0 ? int32_t(st.opts.exits[size_t(origin)]) : -1);
    if (origin >= 0)
      ++st.report.exit_counts[size_t(origin)];
    else
      ++st.report.cloud_tokens;
    if (int(st.report.tokens.size()) >= st.opts.max_tokens) {
      finish(self);
      return true;
    }
  }
  return false;
}

/// Waiting for verdicts ends; the wait counts as communication.
void unstall(self_ptr self) {
  auto& st = self->state;
  if (!st.stalled)
    return;
  st.stalled = false;
  st.report.comm_us += us_since(st.stalled_since);
}

/// Whether there is nothing more to draft: an end of sequence, max_tokens,
/// or a full context.
bool drafted_all(const edge_session_state& st) {
  const auto& w = st.window;
  return (w.generated() > 0 && w.sequence().back() == st.opts.eos)
         || w.generated() >= st.opts.max_tokens || st.pos >= st.opts.max_seq;
}

/// Starts the next edge step unless one is in flight, the draft window is
/// full, or everything is drafted (then the verdicts decide what follows).
void draft_step(self_ptr self) {
  auto& st = self->state;
  if (st.finished() || st.computing)
    return;
  const auto& w = st.window;
  if (drafted_all(st) || w.unverified() >= st.opts.max_draft) {
    if (w.unverified() == 0)
      return finish(self);  // all final: the context is full
    if (!st.stalled) {
      st.stalled = true;
      st.stalled_since = clock_type::now();
    }
    return;
  }
  st.computing = true;
  step(self);
}

/// The cloud is out of reach: every draft becomes final as it is, and the
/// response goes on on the edge alone (and resumes if the link comes back).
void give_up_drafts(self_ptr self, const caf::error& err) {
  auto& st = self->state;
  fmt::print(stderr, "ceco: draft upload failed ({}); {} drafted token(s) stay unverified, "
                     "continuing on the edge alone\n", describe(err), st.window.unverified());
  lose_cloud(self, clock_type::now());
  st.report.degraded_tokens += st.window.unverified();
  st.report.unverified_tokens += st.window.give_up(int(st.opts.exits.size()) - 1);
  unstall(self);
  if (!show_final(self))
    draft_step(self);
}

/// A verdict on the draft upload of rows ..last sent at `epoch`.
void on_verdict(self_ptr self, int32_t epoch, int32_t first, int32_t last, const verdict& v) {
  auto& st = self->state;
  ++st.report.verdicts;
  st.report.verify_bytes += wire_size(v);
  upload_settled(self);
  if (st.finished() || st.degraded() || epoch != st.epoch
      || v.what() == verdict_outcome::stale)
    return;  // a verdict on drafts already rolled back (or no longer needed)
  if (v.what() == verdict_outcome::corrected
      && (v.position < first || v.position > last || v.epoch != epoch + 1))
    return give_up_drafts(
      self, make_error(ceco_errc::bad_position,
                       fmt::format("the cloud corrected position {} at epoch {}, for an upload "
                                   "of positions {}..{} at epoch {}", v.position, v.epoch, first,
                                   last, epoch)));
  unstall(self);
  auto& w = st.window;
  if (v.what() == verdict_outcome::accepted) {
    st.report.accepted_drafts += w.accept(last + 1);
  } else {
    // Every draft before the wrong one stands; from there on the edge
    // continues from the cloud's token, on position+1.
    st.report.accepted_drafts += w.accept(v.position);
    ++st.report.rollbacks;
    st.report.discarded_tokens += w.correct(v.position + 1, v.token);
    st.epoch = v.epoch;
    st.pos = v.position + 1;
    st.context.truncate(st.pos);
  }
  if (!show_final(self))
    draft_step(self);
}

/// Sends rows [start, start + split.rows) with the draft of the last row
/// (-1: nothing to verify); the verdict comes back whenever it is ready.
void upload_draft(self_ptr self, tensor_blob split, int32_t start, int32_t draft) {
  auto& st = self->state;
  const int32_t rows = split.rows;
  draft_upload m{st.session, st.epoch, start, std::move(split),
                 std::vector<int32_t>(size_t(rows), -1)};
  m.drafts.back() = draft;
  ++st.report.uploads;
  st.report.uploaded_positions += rows;
  st.report.verify_bytes += 4 + 4 * int64_t(rows);  // the epoch and the drafts
  ++st.uploads_in_flight;
  const int32_t epoch = st.epoch;
  self->request(st.site.uploader, st.opts.timeout, std::move(m))
    .then([=](verdict& v) { on_verdict(self, epoch, start, start + rows - 1, v); },
          [=](caf::error& err) {
            upload_settled(self);
            auto& st = self->state;
            if (!st.finished() && !st.degraded())
              give_up_drafts(self, err);
          });
}

/// The edge layers and the edge's exit heads over the next input; the token
/// becomes a draft (or final), its row goes up with it, and the next step
/// starts at once unless the window is full.
void draft_forward(self_ptr self) {
  auto& st = self->state;
  const int32_t start = st.pos;
  const int32_t epoch = st.epoch;
  std::vector<int32_t> input(st.window.sequence().begin() + start, st.window.sequence().end());
  const auto n = int32_t(input.size());
  // Results computed for a sequence that was rolled back meanwhile are dropped.
  auto rolled_back = [=] {
    auto& st = self->state;
    if (st.finished())
      return true;
    if (epoch == st.epoch)
      return false;
    st.computing = false;
    draft_step(self);
    return true;
  };
  self->request(st.site.layers, st.opts.timeout, forward_atom::value, st.edge_id, start,
                std::move(input))
    .then(
      [=](edge_output& out) {
        auto& st = self->state;
        st.report.edge_us += out.compute_us;
        if (rolled_back())
          return;
        st.pos = start + n;
        if (st.site.link)
          st.context.append(out.split);
        auto split = std::make_shared<tensor_blob>(std::move(out.split));
        self->request(st.site.local_evaluator, st.opts.timeout, evaluate_atom::value, st.session,
                      std::move(out.exit_states))
          .then(
            [=](exit_decision& d) {
              auto& st = self->state;
              st.report.edge_us += d.compute_us;
              if (rolled_back())
                return;
              const bool confident = d.exit_layer >= 0;
              const bool lost = st.degraded();
              const bool verify = !lost && (st.is(strategy::exact) || !confident);
              const int deepest = int(st.opts.exits.size()) - 1;
              const int origin = confident ? exit_index_of(st, d.exit_layer)
                                           : lost ? deepest : draft_window::uncertain;
              if (lost) {
                ++st.report.degraded_tokens;
                if (st.is(strategy::exact) || !confident)
                  ++st.report.unverified_tokens;
              }
              st.window.draft(d.token, origin, verify);
              if (verify)
                ++st.report.drafts;
              if (!lost)
                upload_draft(self, std::move(*split), start, verify ? d.token : -1);
              st.computing = false;
              if (!show_final(self))
                draft_step(self);
            },
            [=](caf::error& err) { finish(self, "exit evaluator: " + describe(err)); });
      },
      [=](caf::error& err) { finish(self, "edge layers: " + describe(err)); });
}

// -- degraded ─▶ resuming ─▶ running -----------------------------------------------

/// Once the link is back: a new cloud session, to which the edge uploads
/// every position so far (the new cloud lacks them all), and the response
/// goes on collaboratively.
void resume(self_ptr self, int64_t epoch) {
  auto& st = self->state;
  transition(self, phase::resuming);
  st.link_epoch = epoch;
  request_session(
    self, clock_type::now(),
    [=] {
      auto& st = self->state;
      transition(self, phase::running);
      st.epoch = 0;  // a new cloud session has had no rollbacks
      ++st.report.resumed;
      fmt::print(stderr, "ceco: the cloud is back; re-uploading {} positions and going on "
                         "collaboratively\n", st.context.rows);
      if (st.context.rows == 0)
        return advance(self);
      upload(self, st.context.encode(wire_dtype::f32), 0, [=] { advance(self); });
    },
    [=](const caf::error&) {  // not yet: stay on the edge
      transition(self, phase::degraded);
      advance(self);
    });
}

/// One token step: when degraded, first asks whether the link has
/// reconnected since this session lost the cloud.
void step(self_ptr self) {
  auto& st = self->state;
  if (st.finished())
    return;
  if (st.at != phase::degraded || !st.site.link)
    return advance(self);
  self->request(st.site.link, st.opts.timeout, status_atom::value)
    .then(
      [=](int64_t epoch) {
        if (self->state.finished())
          return;
        if (epoch > self->state.link_epoch)
          return resume(self, epoch);
        advance(self);
      },
      [=](caf::error&) { advance(self); });
}

// -- closing ─▶ reporting --------------------------------------------------------

void deliver(self_ptr self) {
  self->state.promise.deliver(self->state.report);
  self->quit();
}

/// Adds the link's byte counts of every cloud session this response used,
/// from the i-th on, then delivers the report.
void collect_traffic(self_ptr self, size_t i) {
  auto& st = self->state;
  transition(self, phase::reporting);
  if (!st.site.link || i >= st.cloud_sessions.size())
    return deliver(self);
  self->request(st.site.link, st.opts.timeout, stats_atom::value, st.cloud_sessions[i])
    .then(
      [=](link_counters& c) {
        auto& t = self->state.report.traffic;
        t.bytes_up += c.bytes_up;
        t.bytes_down += c.bytes_down;
        t.messages_up += c.messages_up;
        t.messages_down += c.messages_down;
        collect_traffic(self, i + 1);
      },
      [=](caf::error&) { deliver(self); });
}

/// Time to first token and the inter-token latency percentiles.
void set_latencies(response_report& r, const std::vector<int64_t>& token_us) {
  if (token_us.empty())
    return;
  r.first_token_us = token_us.front();
  std::vector<int64_t> gaps;
  for (size_t i = 1; i < token_us.size(); ++i)
    gaps.push_back(token_us[i] - token_us[i - 1]);
  if (gaps.empty())
    return;
  std::sort(gaps.begin(), gaps.end());
  auto at = [&](double q) { return gaps[std::min(gaps.size() - 1, size_t(q * double(gaps.size())))]; };
  r.itl_p50_us = at(0.50);
  r.itl_p95_us = at(0.95);
}

void finish(self_ptr self, const std::string& error) {
  auto& st = self->state;
  if (st.finished())
    return;
  const bool lost = st.degraded();
  transition(self, phase::closing);
  st.report.total_us = us_since(st.started);
  unstall(self);
  set_latencies(st.report, st.token_us);
  if (st.drafting())
    st.report.cloud_requests = st.report.drafts;  // each draft asks the cloud about a token
  if (!error.empty())
    st.report.error = error;
  self->send(st.site.layers, close_atom::value, st.edge_id);
  if (st.opens_in_flight > 0)
    return;  // the open's answer closes what it opened, then delivers
  if (st.cloud_sessions.empty())
    return deliver(self);
  if (lost)
    return collect_traffic(self);
  // Uploads still on their way would reach a closed session and would be
  // missing from the byte counts: close once they are acknowledged (see
  // upload_settled).
  if (st.uploads_in_flight == 0)
    close_cloud(self);
}

void close_cloud(self_ptr self) {
  auto& st = self->state;
  transition(self, phase::reporting);
  // Close the cloud session (its summary has the cloud's compute), then
  // collect the link's byte counts, which by then include the close.
  self->request(st.site.cloud, st.opts.timeout, close_atom::value, st.session)
    .then(
      [=](session_summary& s) {
        self->state.report.cloud_us += s.compute_us;
        collect_traffic(self);
      },
      [=](caf::error& err) {
        if (self->state.report.error.empty())
          self->state.report.error = "close: " + describe(err);
        collect_traffic(self);
      });
}

edge_session_actor::behavior_type edge_session_fn(self_ptr self, edge_site site,
                                                  edge_session_options opts) {
  auto& st = self->state;
  st.site = std::move(site);
  st.opts = std::move(opts);
  st.report.mode = to_string(st.opts.mode);
  st.report.prompt = st.opts.prompt;
  st.report.exit_layers.assign(st.opts.exits.begin(), st.opts.exits.end());
  st.report.exit_counts.assign(st.opts.exits.size(), 0);
  return {
    [=](run_atom) -> caf::result<response_report> {
      self->state.promise = self->make_response_promise<response_report>();
      start(self);
      // One run per session: from here on the driver only follows its
      // replies; a second run is refused.
      self->become(edge_session_actor::behavior_type{
        [](run_atom) -> caf::result<response_report> {
          return make_error(ceco_errc::unknown_message, "this edge session already runs");
        },
        [=](cancel_atom) { finish(self, "cancelled"); },
      });
      return self->state.promise;
    },
    [=](cancel_atom) {},  // not yet running: nothing to stop
  };
}

} // namespace

edge_session_actor spawn_edge_session(caf::actor_system& sys, edge_site site,
                                      edge_session_options opts) {
  return sys.spawn(edge_session_fn, std::move(site), std::move(opts));
}

} // namespace ceco
