// The cloud strategy, and the token loop of naive, standalone and
// collaborative (see session_driver.hpp).

#include <algorithm>

#include "actors/session_driver.hpp"

namespace ceco::session_driver {

// -- the cloud strategy: generate (opening the session) ─▶ polls ─▶ close -----------

namespace {

/// One request of the streamed generation: the first (prompt, and session
/// 0 when it opens its own) or a poll for the tokens after `req.from`.
void ask_generation(self_ptr self, generate_request req) {
  auto& st = self->state;
  const bool opening = req.session == 0;
  if (opening)
    ++st.opens_in_flight;  // a cancel waits for the session it opens, to close it
  auto sent = clock_type::now();
  const int32_t max_tokens = req.max_tokens;
  self->request(st.site.cloud, st.opts.timeout, std::move(req))
    .then(
      [=](generate_reply& r) {
        auto& st = self->state;
        if (opening) {
          --st.opens_in_flight;
          if (st.finished())
            return opened_after_finish(self, r.session, sent);
          st.session = r.session;
          st.cloud_sessions.push_back(r.session);
        } else if (st.finished()) {
          return;
        }
        account_round_trip(self, sent, r.cloud_us);
        const auto rtt = us_since(sent);
        for (size_t i = 0; i < r.tokens.size(); ++i) {
          show_token(self, r.tokens[i], -1, i == 0 ? rtt : int64_t(-1));
          ++st.report.cloud_tokens;
        }
        st.cloud_generated += int32_t(r.tokens.size());
        if (r.done || int(st.report.tokens.size()) >= st.opts.max_tokens)
          return finish(self);
        // The next tokens: one poll outstanding at a time (docs/design.md §1).
        ask_generation(self, generate_request{st.session, {}, max_tokens, st.cloud_generated});
      },
      [=](caf::error& err) {
        auto& st = self->state;
        const bool lost = is(err, ceco_errc::session_lost);
        if (opening) {
          --st.opens_in_flight;
          if (st.finished())
            return opened_after_finish(self, std::nullopt, sent);
          // A worker lost while the session opened is waited for as below;
          // anything else fails the response, as a failed open does.
          if (!lost)
            return finish(self, "open session: " + describe(err));
        }
        if (st.finished())
          return;
        if ((!is(err, ceco_errc::cloud_unreachable) && !lost) || !st.site.link
            || st.opts.on_cloud_loss == cloud_loss::fail)
          return finish(self, "cloud generate: " + describe(err));
        st.session_lost = lost;
        // Wait for the link, then generate the rest in a new session, the
        // prompt followed by the tokens shown so far: as if undisturbed.
        lose_cloud(self, sent);
        st.holding = true;
        st.loss_deadline = clock_type::now() + (lost ? std::max(st.opts.cloud_loss_wait, st.opts.timeout)
                                                     : st.opts.cloud_loss_wait);
        fmt::print(stderr, "ceco: the cloud was lost mid-generation ({}); waiting up to {} ms "
                           "to generate the rest in a new session (policy.cloud_loss_wait_ms)\n",
                   describe(err), st.opts.cloud_loss_wait.count());
        watch_link(self);
      });
}

} // namespace

/// The cloud strategy: its first request opens the session (unless one was
/// opened to resume) and every token streams back as it is made.
void generate_in_cloud(self_ptr self) {
  auto& st = self->state;
  transition(self, phase::running);
  const int32_t left = st.opts.max_tokens - int32_t(st.report.tokens.size());
  if (left <= 0)
    return finish(self);
  ++st.report.cloud_requests;
  std::vector<int32_t> prompt = st.opts.prompt;
  prompt.insert(prompt.end(), st.report.tokens.begin(), st.report.tokens.end());
  st.cloud_generated = 0;
  ask_generation(self, generate_request{st.session, std::move(prompt), left, 0,
                                        params_of(st.opts.sampling)});
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
  // A copy: every naive request carries the whole sequence (f32: naive's
  // split rows always are, see spawn_edge_session).
  naive_request req{st.session, tensor_blob(st.context)};
  auto sent = clock_type::now();
  self->request(st.site.cloud, st.opts.timeout, std::move(req))
    .then(
      [=](infer_reply& r) {
        account_round_trip(self, sent, r.cloud_us);
        emit(self, r.token, -1, us_since(sent));
      },
      [=](caf::error& err) {
        if (is(err, ceco_errc::session_lost) && !self->state.finished())
          return reopen(self, sent, false, [=] { ask_naive(self); },
                        [=] { finish(self, "naive request: " + describe(err)); });
        finish(self, "naive request: " + describe(err));
      });
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
        // Only the session is gone: the same request in a new one, so the
        // response's tokens are those it would have had.
        if (is(err, ceco_errc::session_lost) && self->state.site.link
            && self->state.opts.on_cloud_loss != cloud_loss::fail)
          return reopen(self, sent, true, [=] { ask_cloud(self, last); }, [=] {
            auto& st = self->state;
            if (st.opts.on_cloud_loss != cloud_loss::degrade)
              return finish(self, "cloud request: " + describe(err) + ", and no new session opened");
            st.session_lost = true;  // tried again at the next token
            emit(self, st.fallback_token, int(st.opts.exits.size()) - 1);
          });
        if (self->state.opts.on_cloud_loss != cloud_loss::degrade)
          return finish(self, fmt::format("cloud request: {} (policy.on_cloud_loss = \"{}\": "
                                          "collaborative goes on alone only with \"degrade\")",
                                          describe(err), self->state.opts.on_cloud_loss ==
                                          cloud_loss::wait ? "wait" : "fail"));
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
  self->request(evaluator, st.opts.timeout, evaluate_request{st.session, std::move(payload), last,
                                               params_of(st.opts.sampling)})
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
        if (local || self->state.opts.on_cloud_loss != cloud_loss::degrade)
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

void upload(self_ptr self, tensor_blob&& split, int32_t start, std::function<void()> next) {
  auto& st = self->state;
  skip_cloud_prompt_rows(st, split, start);
  ++st.report.uploads;
  st.report.uploaded_positions += split.rows;
  ++st.uploads_in_flight;
  auto sent = clock_type::now();
  auto h = self->request(st.site.uploader, st.opts.timeout,
                         upload_states{{st.session, start, std::move(split)}});
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
  // Nothing stops these steps: only drafting rolls back.
  edge_forward(
      self, start, st.input, uint64_t(0),
      [=](edge_output& out) {
        auto& st = self->state;
        if (st.finished())
          return;
        st.report.edge_us += out.compute_us;
        st.pos = start + n;
        const int32_t last = start + n - 1;
        if (st.keeps_context())
          append_rows(st.context, out.split);
        if (st.is(strategy::naive))
          return ask_naive(self);
        if (st.is(strategy::collaborative) && !st.degraded()) {
          auto exit_states = std::make_shared<tensor_blob>(std::move(out.exit_states));
          upload(self, std::move(out.split), start, [=] { evaluate(self, exit_states, last); });
          return;
        }
        evaluate(self, std::make_shared<tensor_blob>(std::move(out.exit_states)), last);
      },
      [=](caf::error& err) { finish(self, "edge layers: " + describe(err)); });
}

} // namespace ceco::session_driver
