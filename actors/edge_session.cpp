#include "actors/edge_session.hpp"

#include <algorithm>
#include <random>

#include <fmt/format.h>

#include "actors/session_driver.hpp"

namespace ceco {

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

namespace session_driver {

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


void advance(self_ptr self) {
  if (self->state.drafting())
    return draft_forward(self);
  forward(self);
}
void loop(self_ptr self) {
  if (self->state.drafting())
    return draft_step(self);
  step(self);
}

/// A token the user sees (final): appended to the response, its time
/// recorded, and streamed to the token sink with the exit layer that chose
/// it (-1: the cloud) and the round trip of the cloud request that answered
/// it (-1: none).
void show_token(self_ptr self, int32_t token, int32_t exit_layer, int64_t cloud_rtt_us) {
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

void skip_cloud_prompt_rows(const edge_session_state& st, tensor_blob& split, int32_t& start) {
  // The last row stays: it carries the step's draft (or, collaborative, the
  // cloud drops it as a re-send).
  const int32_t skip = std::min(st.cloud_prompt_rows - start, split.rows - 1);
  if (skip <= 0)
    return;
  drop_rows(split, skip);
  start += skip;
}

/// The cloud is out of reach: the response goes on on the edge alone.
void lose_cloud(self_ptr self, clock_type::time_point sent) {
  transition(self, phase::degraded);
  self->state.report.comm_us += us_since(sent);
}

// -- opening ---------------------------------------------------------------------

/// A session the cloud lost (session_lost) is closed once its replacement
/// is open: the close ends it for the gateway's count of this connection's
/// sessions; the answer (session_lost) is expected and dropped.
void close_lost_session(self_ptr self, uint64_t lost) {
  self->request(self->state.site.cloud, self->state.opts.timeout, close_session{lost})
    .then([](session_summary&) {}, [](caf::error&) {});
}

/// When the edge began to wait for an open sent at `sent`: once its
/// prefill, which runs alongside the first open (start_prefill), was done;
/// now if it still runs.
clock_type::time_point open_wait_start(const edge_session_state& st,
                                       clock_type::time_point sent) {
  return st.prefill.in_flight ? clock_type::now() : std::max(sent, st.prefill.ready_at);
}

void opened(self_ptr self, uint64_t id, clock_type::time_point sent, int32_t prompt_rows) {
  auto& st = self->state;
  if (st.replacing_lost && st.session != 0 && st.session != id)
    close_lost_session(self, st.session);
  st.replacing_lost = false;
  st.session = id;
  st.cloud_prompt_rows = prompt_rows;
  st.cloud_sessions.push_back(id);
  st.report.comm_us += us_since(open_wait_start(st, sent));
}

/// An open answered after the response was cancelled: the session it
/// opened (if any) is closed like any other, then the report goes out.
void opened_after_finish(self_ptr self, std::optional<uint64_t> id,
                         clock_type::time_point sent) {
  if (id)
    opened(self, *id, sent, 0);
  if (self->state.uploads_in_flight == 0)
    id ? close_cloud(self) : collect_traffic(self);
}

void open_cloud(self_ptr self) {
  // The cloud strategy's first request opens its own session: no round trip.
  if (self->state.is(strategy::cloud))
    return generate_in_cloud(self);
  auto sent = clock_type::now();
  // The whole prompt: the cloud computes it through every layer while the
  // edge computes its own, and the edge's first token needs no row of the
  // prompt's from the edge (its first upload's row is one the cloud holds).
  const auto prompt_rows =
    self->state.opts.prompt_to_cloud ? int32_t(self->state.opts.prompt.size()) : 0;
  request_session(
    self, sent, prompt_rows,
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
        lose_cloud(self, open_wait_start(st, sent));
        fmt::print(stderr, "ceco: the cloud is unreachable; starting on the edge alone\n");
        return loop(self);
      }
      finish(self, "open session: " + describe(err));
    });
}

/// Hands the early prefill's result to the first step's handlers, once
/// both are there.
void hand_over_prefill(self_ptr self) {
  auto& p = self->state.prefill;
  if (!p.result || !p.on_out)
    return;
  auto result = std::move(*p.result);
  auto on_out = std::move(p.on_out);
  auto on_error = std::move(p.on_error);
  p.result.reset();
  p.on_out = nullptr;
  p.on_error = nullptr;
  if (result)
    return on_out(*result);
  auto err = result.error();
  on_error(err);
}

void start_prefill(self_ptr self) {
  auto& st = self->state;
  st.prefill.in_flight = true;
  auto arrived = [=](caf::expected<edge_output> result) {
    auto& p = self->state.prefill;
    p.in_flight = false;
    p.ready_at = clock_type::now();
    p.result = std::move(result);
    hand_over_prefill(self);
  };
  // Nothing stops it: there is no draft to roll back yet.
  self->request(st.site.layers, st.opts.timeout, forward_atom::value, st.edge_id, int32_t(0),
                st.opts.prompt, uint8_t(st.opts.split_dtype), uint64_t(0))
    .then([=](edge_output& out) { arrived(std::move(out)); },
          [=](caf::error& err) { arrived(std::move(err)); });
}

void take_prefill(self_ptr self, std::function<void(edge_output&)> on_out,
                  std::function<void(caf::error&)> on_error) {
  auto& p = self->state.prefill;
  p.on_out = std::move(on_out);
  p.on_error = std::move(on_error);
  hand_over_prefill(self);
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
  // Every strategy but the cloud's runs the prompt through the edge layers
  // first: they do it during the open's round trip.
  if (!st.is(strategy::cloud) && !st.opts.prompt.empty())
    start_prefill(self);
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

// -- degraded ─▶ resuming ─▶ running -----------------------------------------------

/// Once the link is back: a new cloud session, to which the edge uploads
/// every position so far (the new cloud lacks them all), and the response
/// goes on collaboratively.
void resume(self_ptr self, int64_t epoch) {
  auto& st = self->state;
  transition(self, phase::resuming);
  st.link_epoch = epoch;
  st.replacing_lost = st.session_lost;
  st.session_lost = false;
  request_session(
    self, clock_type::now(), 0,
    [=] {
      auto& st = self->state;
      transition(self, phase::running);
      st.epoch = 0;  // a new cloud session has had no rollbacks
      ++st.report.resumed;
      if (st.holding && st.is(strategy::cloud)) {
        fmt::print(stderr, "ceco: the cloud is back; generating again in a new session\n");
        st.holding = false;
        return generate_in_cloud(self);
      }
      fmt::print(stderr, "ceco: the cloud is back; re-uploading {} positions{} and going on "
                         "collaboratively\n", st.context.rows,
                 st.holding ? fmt::format(" with {} draft(s) to verify", st.window.unverified())
                            : std::string());
      if (st.holding)
        return resume_drafts(self);
      if (st.context.rows == 0)
        return advance(self);
      upload(self, tensor_blob(st.context), 0, [=] { advance(self); });
    },
    [=](const caf::error&) {  // not yet: stay on the edge
      transition(self, phase::degraded);
      if (self->state.holding)
        return watch_link(self);  // drafting goes on by itself, up to the window
      advance(self);
    });
}

bool may_resume(const edge_session_state& st, int64_t link_epoch) {
  return link_epoch > st.link_epoch || (st.session_lost && link_epoch >= 0);
}

void reopen(self_ptr self, clock_type::time_point sent, bool reupload, std::function<void()> again,
            std::function<void()> failed) {
  lose_cloud(self, sent);
  transition(self, phase::resuming);
  self->state.session_lost = false;
  self->state.replacing_lost = true;
  fmt::print(stderr, "ceco: the cloud lost this response's session (its worker went down); "
                     "opening a new one\n");
  request_session(
    self, clock_type::now(), 0,
    [=] {
      auto& st = self->state;
      transition(self, phase::running);
      st.epoch = 0;
      ++st.report.resumed;
      if (!reupload || st.context.rows == 0)
        return again();
      upload(self, tensor_blob(st.context), 0, again);
    },
    [=](const caf::error& err) {
      transition(self, phase::degraded);
      fmt::print(stderr, "ceco: no new cloud session ({}); continuing on the edge alone\n",
                 describe(err));
      failed();
    });
}

/// One token step: when degraded, first asks whether the link has
/// reconnected since this session lost the cloud.
void step(self_ptr self) {
  auto& st = self->state;
  if (st.finished())
    return;
  // Held drafts: watch_link looks for the link, this step just drafts on.
  if (st.at != phase::degraded || !st.site.link || st.holding)
    return advance(self);
  self->request(st.site.link, st.opts.timeout, status_atom::value)
    .then(
      [=](int64_t epoch) {
        if (self->state.finished())
          return;
        if (may_resume(self->state, epoch))
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
  self->request(st.site.cloud, st.opts.timeout, close_session{st.session})
    .then(
      [=](session_summary& s) {
        self->state.report.cloud_us += s.compute_us;
        collect_traffic(self);
      },
      [=](caf::error& err) {
        // A cloud lost while the session closes takes the session with it:
        // every token is out by now, so the response stands.
        if (is(err, ceco_errc::cloud_unreachable) || is(err, ceco_errc::session_lost))
          fmt::print(stderr, "ceco: the cloud was lost while this response closed its session "
                             "({}); the response is complete\n", describe(err));
        else if (self->state.report.error.empty())
          self->state.report.error = "close: " + describe(err);
        collect_traffic(self);
      });
}

edge_session_actor::behavior_type edge_session_fn(self_ptr self, edge_site site,
                                                  edge_session_options opts) {
  auto& st = self->state;
  st.site = std::move(site);
  st.opts = std::move(opts);
  if (st.is(strategy::naive))
    st.opts.split_dtype = wire_dtype::f32;  // naive sends f32 (docs/design.md §2)
  st.report.mode = st.opts.mode;
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
        [=](reconnect_atom) { watch_link(self); },
      });
      return self->state.promise;
    },
    [=](cancel_atom) {},  // not yet running: nothing to stop
    [=](reconnect_atom) {},
  };
}

} // namespace session_driver

using namespace session_driver;

edge_session_actor spawn_edge_session(caf::actor_system& sys, edge_site site,
                                      edge_session_options opts) {
  return sys.spawn(edge_session_fn, std::move(site), std::move(opts));
}

} // namespace ceco
