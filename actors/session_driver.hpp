#pragma once

// The edge session driver's state and the functions its three files share
// (internal to actors/; see edge_session.hpp for the driver itself):
//   edge_session.cpp  phases, opening, degrading and resuming, closing and
//                     reporting, the actor
//   token_loop.cpp    the cloud strategy, and the token loop of naive,
//                     standalone and collaborative
//   draft_loop.cpp    the drafting loop of speculative and exact

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "actors/draft_window.hpp"
#include "actors/edge_session.hpp"
#include "actors/hidden_rows.hpp"
#include "actors/sim_clock.hpp"

namespace ceco::session_driver {

using clock_type = sim_clock;

inline int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

/// The prompt's edge step, asked for with the open so that the edge
/// computes the prompt during the open's round trip instead of after it;
/// the token loop's first edge step takes its result (edge_forward).
struct early_prefill {
  bool in_flight = false;
  std::optional<caf::expected<edge_output>> result;  // arrived, not yet taken
  clock_type::time_point ready_at;                    // when it arrived
  // The token loop's first step, once it asked for it.
  std::function<void(edge_output&)> on_out;
  std::function<void(caf::error&)> on_error;

  bool pending() const { return in_flight || result; }
};

struct edge_session_state {
  edge_site site;
  edge_session_options opts;
  phase at = phase::idle;  // changed by transition() only
  response_report report;
  caf::typed_response_promise<response_report> promise;
  uint64_t session = 0;                  // the current cloud session
  int32_t cloud_prompt_rows = 0;         // positions it computed from the prompt's tokens
  uint64_t edge_id = 0;                  // the edge layers' cache for this response
  std::vector<uint64_t> cloud_sessions;  // every one this response opened
  int64_t link_epoch = 0;                // the link's epoch when the cloud session opened
  int32_t pos = 0;                       // next position the edge computes
  std::vector<int32_t> input;            // tokens of the next edge step
  // Every split state so far, in opts.split_dtype, when keeps_context():
  // naive sends them all each token; collaborative, speculative and exact
  // upload them again to a new cloud session after a loss.
  tensor_blob context;
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
  // The cloud lost in speculative or exact: drafts are held unverified until
  // it is back (verified then) or `loss_deadline` passes.
  bool holding = false;
  clock_type::time_point loss_deadline;
  // The cloud answered session_lost (the worker that held the session went
  // down) while the link stayed up: resume at the next look, not at the
  // link's next epoch.
  bool session_lost = false;
  bool replacing_lost = false;  // the session being opened replaces a lost one (closed then)
  int32_t cloud_generated = 0;  // cloud strategy: tokens of the generation in progress received
  early_prefill prefill;        // the prompt's edge step, started with the open
  static inline const char* name = "edge_session";

  bool is(strategy s) const { return opts.mode == s; }
  bool drafting() const { return is(strategy::speculative) || is(strategy::exact); }
  /// Collaborates with the cloud token by token (and so can lose it and resume).
  bool token_by_token() const { return is(strategy::collaborative) || drafting(); }
  bool degraded() const { return at == phase::degraded || at == phase::resuming; }
  bool finished() const { return at == phase::closing || at == phase::reporting; }
  /// Whether the split states are kept (context): naive's every token, and
  /// a response that may resume after losing the cloud (a link, and
  /// policy.on_cloud_loss other than "fail"); else each is only uploaded.
  bool keeps_context() const {
    return is(strategy::naive)
           || (bool(site.link) && opts.on_cloud_loss != cloud_loss::fail && token_by_token());
  }
};

using self_ptr = edge_session_actor::stateful_pointer<edge_session_state>;

// -- edge_session.cpp ---------------------------------------------------------------

/// Moves the session to `to` along an edge of the diagram in edge_session.hpp.
void transition(self_ptr self, phase to);
/// The next edge step of the strategy's token loop.
void advance(self_ptr self);
/// Starts (or continues) the token loop.
void loop(self_ptr self);
/// A token the user sees (final), streamed to the token sink.
void show_token(self_ptr self, int32_t token, int32_t exit_layer, int64_t cloud_rtt_us = -1);
/// Round trip minus the time the cloud reports: the network's share.
void account_round_trip(self_ptr self, clock_type::time_point sent, int64_t cloud_us);
/// The cloud is out of reach: the response goes on on the edge alone.
void lose_cloud(self_ptr self, clock_type::time_point sent);
void opened(self_ptr self, uint64_t id, clock_type::time_point sent, int32_t prompt_rows);
void opened_after_finish(self_ptr self, std::optional<uint64_t> id, clock_type::time_point sent);
/// Once the link is back (its epoch past link_epoch): a new cloud session.
void resume(self_ptr self, int64_t epoch);
/// Whether a session that lost the cloud may resume now: the link came back
/// (its epoch past the one the session knew), or the cloud lost only the
/// session and is there to open another.
bool may_resume(const edge_session_state& st, int64_t link_epoch);
/// The cloud lost this response's session (session_lost) but is reachable:
/// a new session, every position so far uploaded again (`reupload`), then
/// `again` (the request that failed); `failed` if no session opens.
void reopen(self_ptr self, clock_type::time_point sent, bool reupload, std::function<void()> again,
            std::function<void()> failed);
/// One token step: when degraded, first asks whether the link has reconnected.
void step(self_ptr self);
void finish(self_ptr self, const std::string& error = {});
void close_cloud(self_ptr self);
void collect_traffic(self_ptr self, size_t i = 0);

/// Rows of `split` (positions [start, ...)) that the cloud session computed
/// itself from the prompt's tokens are not uploaded, but for the last:
/// drops them, moving `start` past them.
void skip_cloud_prompt_rows(const edge_session_state& st, tensor_blob& split, int32_t& start);

/// Opens a cloud session: `on_open` runs once it is open, `on_error` with
/// the error; a response that finished meanwhile closes what it opened.
/// `prompt_rows`: the prompt's first tokens the open carries, whose split
/// rows the cloud computes itself (opts.prompt_to_cloud; 0 when every row
/// is uploaded, as after a loss).
template <class OnOpen, class OnError>
void request_session(self_ptr self, clock_type::time_point sent, int32_t prompt_rows,
                     OnOpen on_open, OnError on_error) {
  auto& st = self->state;
  ++st.opens_in_flight;
  open_session open{params_of(st.opts.sampling),
                    std::vector<int32_t>(st.opts.prompt.begin(),
                                         st.opts.prompt.begin() + prompt_rows)};
  self->request(st.site.cloud, st.opts.timeout, std::move(open))
    .then(
      [=](uint64_t id) {
        --self->state.opens_in_flight;
        if (self->state.finished())
          return opened_after_finish(self, id, sent);
        opened(self, id, sent, prompt_rows);
        on_open();
      },
      [=](caf::error& err) {
        --self->state.opens_in_flight;
        if (self->state.finished())
          return opened_after_finish(self, std::nullopt, sent);
        on_error(err);
      });
}

/// Starts the prompt's edge step (early_prefill) alongside the open.
void start_prefill(self_ptr self);
/// Hands the early prefill to the first step's handlers, now or when it arrives.
void take_prefill(self_ptr self, std::function<void(edge_output&)> on_out,
                  std::function<void(caf::error&)> on_error);

/// The edge layers over `input` at positions [start, ...): the early
/// prefill's result for the prompt's step when one was started, else a
/// request (`ticket`: the step's stop ticket, 0 for none).
template <class OnOut, class OnError>
void edge_forward(self_ptr self, int32_t start, std::vector<int32_t> input, uint64_t ticket,
                  OnOut on_out, OnError on_error) {
  auto& st = self->state;
  if (start == 0 && st.prefill.pending())
    return take_prefill(self, std::move(on_out), std::move(on_error));
  self->request(st.site.layers, st.opts.timeout, forward_atom::value, st.edge_id, start,
                std::move(input), uint8_t(st.opts.split_dtype), ticket)
    .then(std::move(on_out), std::move(on_error));
}

// -- token_loop.cpp -----------------------------------------------------------------

void generate_in_cloud(self_ptr self);
/// The edge layers over the next input; then the strategy's decision.
void forward(self_ptr self);
void evaluate(self_ptr self, std::shared_ptr<tensor_blob> states, int32_t last);
/// Sends rows [start, start + split.rows) (collaborative); `next` runs once
/// sent (or acknowledged, with upload.mode = "sync").
void upload(self_ptr self, tensor_blob&& split, int32_t start, std::function<void()> next);
/// Counts an upload as acknowledged (or failed); the last one lets a
/// finished response close its cloud session.
void upload_settled(self_ptr self);
/// The index in opts.exits of an exit layer.
int exit_index_of(const edge_session_state& st, int32_t layer);

// -- draft_loop.cpp -----------------------------------------------------------------

/// Starts the next edge step unless one is in flight, the window is full or
/// everything is drafted.
void draft_step(self_ptr self);
/// The edge layers and the edge's exit heads over the next input; the token
/// becomes a draft (or final).
void draft_forward(self_ptr self);
/// Waiting for verdicts ends; the wait counts as communication.
void unstall(self_ptr self);
/// The link is back while drafts are held: uploads every position again in
/// the new session, each held draft with its row, and drafting goes on.
void resume_drafts(self_ptr self);
/// The cloud stayed away past policy.cloud_loss_wait_ms with drafts held:
/// an error (wait) or the drafts final unverified (degrade).
void cloud_loss_expired(self_ptr self);
/// While drafts are held: checks the link, resumes when it is back, gives
/// up at the deadline, else looks again shortly.
void watch_link(self_ptr self);

} // namespace ceco::session_driver
