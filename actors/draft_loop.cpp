// The drafting loop of speculative and exact: drafts ahead of the cloud's
// verdicts (see session_driver.hpp and docs/design.md §5).

#include <algorithm>

#include "actors/edge_layers.hpp"
#include "actors/session_driver.hpp"

namespace ceco::session_driver {

void on_verdict(self_ptr self, int32_t epoch, int32_t first, int32_t last, const verdict& v);
void lose_cloud_while_drafting(self_ptr self, const caf::error& err);

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
void give_up_drafts(self_ptr self, const std::string& why) {
  auto& st = self->state;
  fmt::print(stderr, "ceco: {}; {} drafted token(s) stay unverified, continuing on the edge "
                     "alone\n", why, st.window.unverified());
  st.holding = false;
  st.report.degraded_tokens += st.window.unverified();
  st.report.unverified_tokens += st.window.give_up(int(st.opts.exits.size()) - 1);
  unstall(self);
  if (!show_final(self))
    draft_step(self);
}

/// A draft upload failed: the cloud is lost. Per policy.on_cloud_loss the
/// response ends, or holds its drafts unverified (drafting on up to the
/// window) until the link is back and they are verified, or until the wait
/// is over.
void lose_cloud_while_drafting(self_ptr self, const caf::error& err) {
  auto& st = self->state;
  const auto& o = st.opts;
  if (o.on_cloud_loss == cloud_loss::fail)
    return finish(self, fmt::format("the cloud was lost ({}), and policy.on_cloud_loss = \"fail\"",
                                    describe(err)));
  lose_cloud(self, clock_type::now());
  st.session_lost = is(err, ceco_errc::session_lost);
  if (o.on_cloud_loss == cloud_loss::degrade && o.cloud_loss_wait.count() == 0 && !st.session_lost)
    return give_up_drafts(self, fmt::format("draft upload failed ({})", describe(err)));
  st.holding = true;
  // A lost session alone (its worker went down) is opened again elsewhere at
  // once; the wait covers that open even where the policy would not wait.
  st.loss_deadline = clock_type::now()
                     + (st.session_lost ? std::max(o.cloud_loss_wait, o.timeout) : o.cloud_loss_wait);
  fmt::print(stderr, "ceco: the cloud was lost ({}); holding {} drafted token(s) unverified and "
                     "waiting up to {} ms for it (policy.cloud_loss_wait_ms)\n",
             describe(err), st.window.unverified(), o.cloud_loss_wait.count());
  watch_link(self);
  draft_step(self);
}

void watch_link(self_ptr self) {
  auto& st = self->state;
  if (st.finished() || !st.holding || st.at != phase::degraded)
    return;
  if (clock_type::now() >= st.loss_deadline || !st.site.link)
    return cloud_loss_expired(self);
  self->request(st.site.link, st.opts.timeout, status_atom::value)
    .then(
      [=](int64_t epoch) {
        auto& st = self->state;
        if (st.finished() || !st.holding || st.at != phase::degraded)
          return;
        if (may_resume(st, epoch))
          return resume(self, epoch);
        self->delayed_send(self, std::chrono::milliseconds(20), reconnect_atom::value);
      },
      [=](caf::error&) {
        self->delayed_send(self, std::chrono::milliseconds(20), reconnect_atom::value);
      });
}

void cloud_loss_expired(self_ptr self) {
  auto& st = self->state;
  const auto waited = st.opts.cloud_loss_wait.count();
  if (!st.drafting())  // the cloud strategy: nothing to go on with alone
    return finish(self, fmt::format("the cloud was lost mid-generation and not back within {} ms "
                                    "(policy.cloud_loss_wait_ms)", waited));
  if (st.opts.on_cloud_loss == cloud_loss::wait)
    return finish(self, fmt::format(
      "the cloud was lost and not back within {} ms (policy.cloud_loss_wait_ms): with "
      "policy.on_cloud_loss = \"wait\" a {} response never emits tokens the cloud did not "
      "verify", waited, to_string(st.opts.mode)));
  give_up_drafts(self, fmt::format("the cloud was not back within {} ms "
                                   "(policy.cloud_loss_wait_ms)", waited));
}

void resume_drafts(self_ptr self) {
  auto& st = self->state;
  st.holding = false;
  const auto& w = st.window;
  const int32_t rows = st.context.rows;
  // Row i carries the token after position i when that token awaits a verdict.
  std::vector<int32_t> drafts(size_t(rows), -1);
  for (int32_t i = 0; i < rows; ++i)
    if (i + 1 < w.size() && w.awaits_verdict(i + 1))
      drafts[size_t(i)] = w.sequence()[size_t(i + 1)];
  // Their distributions are not kept: each is verified as a point mass,
  // which keeps the cloud's distribution for any draft (docs/design.md §5).
  draft_upload m{st.session, st.epoch, 0, tensor_blob(st.context), std::move(drafts), {}};
  ++st.report.uploads;
  st.report.uploaded_positions += rows;
  st.report.verify_bytes += 4 + 4 * int64_t(rows);
  ++st.uploads_in_flight;
  const int32_t epoch = st.epoch;
  const uint64_t session = st.session;
  self->request(st.site.uploader, st.opts.timeout, std::move(m))
    .then([=](verdict& v) { on_verdict(self, epoch, 0, rows - 1, v); },
          [=](caf::error& err) {
            upload_settled(self);
            auto& st = self->state;
            // An upload of a session already replaced failing says nothing
            // of the current one.
            if (!st.finished() && !st.degraded() && session == st.session)
              lose_cloud_while_drafting(self, err);
          });
  if (!st.computing)
    draft_step(self);
}

/// The edge step in flight drafts after a token the cloud just corrected:
/// it ends after its layer in progress instead of running to its end
/// (edge_step_stops), so the edge begins the corrected sequence sooner.
void stop_edge_step(self_ptr self) {
  auto& st = self->state;
  if (st.site.stops)
    st.site.stops->stop(st.edge_id);
  self->send(st.site.layers, cancel_atom::value, st.edge_id);
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
      self, fmt::format("the cloud corrected position {} at epoch {}, for an upload of "
                        "positions {}..{} at epoch {}", v.position, v.epoch, first, last, epoch));
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
    keep_rows(st.context, st.pos);
    if (st.computing)
      stop_edge_step(self);
  }
  if (!show_final(self))
    draft_step(self);
}

/// Sends rows [start, start + split.rows) with the draft of the last row
/// (-1: nothing to verify) and, when sampled, the distribution it was drawn
/// from (its candidates; none: a point mass); the verdict comes back
/// whenever it is ready.
void upload_draft(self_ptr self, tensor_blob&& split, int32_t start, int32_t draft,
                  std::vector<int32_t>&& q_tokens, std::vector<float>&& q_weights) {
  auto& st = self->state;
  skip_cloud_prompt_rows(st, split, start);
  const int32_t rows = split.rows;
  draft_upload m{st.session, st.epoch, start, std::move(split),
                 std::vector<int32_t>(size_t(rows), -1), {}};
  m.drafts.back() = draft;
  if (draft >= 0 && !q_tokens.empty()) {
    m.q.counts.assign(size_t(rows), 0);
    m.q.counts.back() = int32_t(q_tokens.size());
    m.q.tokens = std::move(q_tokens);
    m.q.weights = std::move(q_weights);
  }
  ++st.report.uploads;
  st.report.uploaded_positions += rows;
  // The epoch, the drafts and their distributions (a count per row, 8
  // bytes per candidate).
  st.report.verify_bytes += 4 + 4 * int64_t(rows) + 4 * int64_t(m.q.counts.size())
                            + 8 * int64_t(m.q.tokens.size());
  ++st.uploads_in_flight;
  const int32_t epoch = st.epoch;
  const uint64_t session = st.session;
  self->request(st.site.uploader, st.opts.timeout, std::move(m))
    .then([=](verdict& v) {
            if (session == self->state.session)  // else a verdict on a replaced session
              on_verdict(self, epoch, start, start + rows - 1, v);
            else
              upload_settled(self);
          },
          [=](caf::error& err) {
            upload_settled(self);
            auto& st = self->state;
            if (!st.finished() && !st.degraded() && session == st.session)
              lose_cloud_while_drafting(self, err);
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
  edge_forward(
      self, start, std::move(input), st.site.stops ? st.site.stops->ticket(st.edge_id) : uint64_t(0),
      [=](edge_output& out) {
        auto& st = self->state;
        st.report.edge_us += out.compute_us;
        if (rolled_back())
          return;
        if (out.split.rows == 0)  // only a rolled-back step is ever stopped
          return finish(self, "edge layers: a step stopped without a rollback");
        st.pos = start + n;
        if (st.keeps_context())
          append_rows(st.context, out.split);
        auto split = std::make_shared<tensor_blob>(std::move(out.split));
        self->request(st.site.local_evaluator, st.opts.timeout,
                      evaluate_request{st.session, std::move(out.exit_states), start + n - 1,
                                       params_of(st.opts.sampling)})
          .then(
            [=](exit_decision& d) {
              auto& st = self->state;
              st.report.edge_us += d.compute_us;
              if (rolled_back())
                return;
              const bool confident = d.exit_layer >= 0;
              // Lost and given up: the edge's token is final as it is. Lost
              // and holding: a draft like any other, uploaded once the cloud
              // is back.
              const bool lost = st.degraded() && !st.holding;
              const bool verify = !lost && (st.is(strategy::exact) || !confident);
              const int deepest = int(st.opts.exits.size()) - 1;
              const int origin = confident ? exit_index_of(st, d.exit_layer)
                                           : lost ? deepest : draft_window::uncertain;
              if (lost) {
                ++st.report.degraded_tokens;
                if (st.is(strategy::exact) || !confident)
                  ++st.report.unverified_tokens;
              }
              // A token the cloud verifies is the draft, drawn from the
              // distribution that goes up with it (docs/design.md §5).
              st.window.draft(verify ? d.draft : d.token, origin, verify);
              if (verify)
                ++st.report.drafts;
              if (!st.degraded())
                upload_draft(self, std::move(*split), start, verify ? d.draft : -1,
                             std::move(d.q_tokens), std::move(d.q_weights));
              st.computing = false;
              if (!show_final(self))
                draft_step(self);
            },
            [=](caf::error& err) { finish(self, "exit evaluator: " + describe(err)); });
      },
      [=](caf::error& err) { finish(self, "edge layers: " + describe(err)); });
}

} // namespace ceco::session_driver
