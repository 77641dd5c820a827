#include "actors/cloud_layers.hpp"

#include <optional>
#include <chrono>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "actors/cloud_context.hpp"
#include "actors/hidden_rows.hpp"
#include "actors/layer_stage.hpp"
#include "actors/profile_clock.hpp"
#include "actors/token_chooser.hpp"
#include "net/auth.hpp"
#include "model/generation_batch.hpp"
#include "model/sampler.hpp"
#include "model/transformer.hpp"

namespace ceco {

int64_t cloud_context_bytes(const cloud_context& ctx) {
  return ctx.cache.bytes() + (ctx.final_hidden.defined() ? int64_t(ctx.final_hidden.nbytes()) : 0);
}

void rewind(cloud_context& ctx, int32_t positions) {
  ctx.computed = std::min(ctx.computed, std::max(positions, 0));
  ctx.cache.truncate(ctx.computed);
}

int32_t computed_positions(const cloud_context& ctx) { return ctx.computed; }

namespace {

using clock_type = sim_clock;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

struct cloud_layers_state {
  std::shared_ptr<const transformer> model;
  int split = 0;
  int32_t eos = 2;
  token_chooser chooser;   // the final head and the choice, for every token asked
  // With stages (placement.cloud_stages), these layers end at `stage_from`
  // and the first stage takes the rows on from there.
  layer_stage_actor stage;
  int stage_from = 0;
  // [rows, n_embd] on the model's device: a step's catch-up input, every
  // session's uploaded rows decoded straight into it; grows to the largest step.
  at::Tensor step_input;
  at::Tensor step_staging;  // [rows, n_embd] on the CPU, for another device
  profile_clock clock;     // profile mode: the profile's cloud cost for each piece of work
  // The cloud strategy's generations in progress, stepped together.
  std::unique_ptr<generation_batch> generations;
  // Each is streamed (docs/design.md §1): the tokens made so far wait for
  // the session's next poll, at most one of which is held at a time.
  struct generating {
    uint64_t session = 0;
    std::vector<int32_t> tokens;  // made so far (complete once done)
    bool done = false;
    bool closed = false;          // its session ended: dropped once done
    caf::error failed;
    int64_t cloud_us = 0;         // the steps it took part in, not yet reported
    std::optional<caf::typed_response_promise<generate_reply>> poll;
    int32_t from = 0;             // the held poll's
  };
  std::unordered_map<uint64_t, generating> generating_by_id;  // by generation id
  std::unordered_map<uint64_t, uint64_t> generation_of;       // session -> generation id
  bool stepping = false;  // a (generate_atom) is on its way, or a step is held
  int max_generations = 256;
  static inline const char* name = "cloud_layers";
};

/// fp32 [rows, n_embd] tensor on the model's device from a checked blob.
at::Tensor on_device(const tensor_blob& b, const transformer& m) {
  auto x = to_tensor(b);
  return m.device().is_cpu() ? x : x.to(m.device());
}

/// The layers these cloud layers run: [split, stage_from), or to the end.
int last_layer(const cloud_layers_state& st) {
  return st.stage ? st.stage_from : st.model->config().n_layer;
}

/// A stage's error for one work item as the CAF error it stands for.
caf::error error_of(const stage_work_done& d) {
  return make_error(static_cast<ceco_errc>(d.error_code), d.error);
}

/// Room for a step's input of `rows` rows in st.step_input.
void reserve_step_input(cloud_layers_state& st, int64_t rows) {
  if (st.step_input.defined() && st.step_input.size(0) >= rows)
    return;
  auto opts = at::TensorOptions().dtype(at::kFloat).device(st.model->device());
  st.step_input = at::empty({std::max<int64_t>(rows, 1), st.model->config().n_embd}, opts);
}

/// Rows [first_row, first_row + rows.rows) of the step's input, decoded from
/// the upload blobs as they arrived: the one copy an uploaded row takes on
/// the cloud in-process (docs/design.md §2). Sessions decoded one after
/// another lie one after another, so forward_sequences computes them where
/// they are.
void decode_step_rows(cloud_layers_state& st, const uploaded_rows& rows, int64_t first_row) {
  auto view = st.step_input.narrow(0, first_row, rows.rows);
  if (view.is_cpu()) {
    decode_rows(rows, view.data_ptr<float>());
    return;
  }
  if (!st.step_staging.defined() || st.step_staging.size(0) < rows.rows)
    st.step_staging = at::empty({int64_t(rows.rows), view.size(1)}, at::kFloat);
  auto staging = st.step_staging.narrow(0, 0, rows.rows);
  decode_rows(rows, staging.data_ptr<float>());
  view.copy_(staging);
}

/// The split rows of prompt tokens at positions [pos, pos + tokens.size()),
/// computed here over layers [0, split) (open_session.prompt), into rows
/// [first_row, ...) of the step's input: the cloud's own states, where an
/// upload would bring the edge's.
void prompt_rows(cloud_layers_state& st, const std::vector<int32_t>& tokens, int32_t pos,
                 int64_t first_row) {
  const auto& m = *st.model;
  const auto n = int64_t(tokens.size());
  auto cache = m.make_cache(0, st.split, int(pos + n));
  auto x = m.embed(tokens);
  m.forward_layers(x, pos, 0, st.split, cache);
  st.step_input.narrow(0, first_row, n).copy_(x);
}

/// Why `w` cannot be computed, or none.
caf::error check_work(const cloud_layers_state& st, const cloud_work& w) {
  const auto& cfg = st.model->config();
  auto& ctx = *w.ctx;
  if (w.rows() > 0) {
    if (w.states.rows > 0)
      if (auto bad = w.states.check(cfg.n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "catch-up states: " + bad);
    for (size_t i = 0; i < w.prompt.size(); ++i)
      if (w.prompt[i] < 0 || w.prompt[i] >= cfg.vocab_size)
        return make_error(ceco_errc::bad_tensor,
                          fmt::format("prompt token {} is id {}; the vocabulary holds 0..{}", i,
                                      w.prompt[i], cfg.vocab_size - 1));
    if (w.start != ctx.computed)
      return make_error(ceco_errc::bad_position,
                        fmt::format("catch-up from position {}, but {} are computed", w.start,
                                    ctx.computed));
    if (int64_t(w.start) + w.rows() > ctx.cache.capacity())
      return make_error(ceco_errc::bad_position,
                        fmt::format("catch-up of positions {}..{} exceeds the context of {}",
                                    w.start, int64_t(w.start) + w.rows() - 1,
                                    ctx.cache.capacity()));
  }
  if (auto bad = w.q.check(w.tokens_after.size(), cfg.vocab_size); !bad.empty())
    return make_error(ceco_errc::bad_tensor, "catch-up drafts: " + bad);
  const int64_t computed = ctx.computed + int64_t(w.rows());
  for (auto pos : w.tokens_after)
    if (pos < 0 || pos >= computed)
      return make_error(ceco_errc::bad_position,
                        fmt::format("token after position {} requested, positions 0..{} are "
                                    "computed", pos, computed - 1));
  return {};
}

/// Catches every valid work item up in one multi-sequence forward, then
/// answers all requested tokens from one logits product. With stages, the
/// rows go on to the first stage instead, as `staged` (its work in the
/// order of `staged_work`, the indices of step.work).
void run_step(cloud_layers_state& st, cloud_step& step, cloud_step_done& out, stage_step& staged,
              std::vector<size_t>& staged_work) {
  auto& m = *st.model;
  c10::InferenceMode guard;
  std::vector<at::Tensor> inputs(step.work.size());
  std::vector<transformer::sequence_step> seqs;
  std::vector<size_t> seq_work;  // work index of each entry of seqs
  int64_t step_rows = 0, input_row = 0;
  for (const auto& w : step.work)
    step_rows += w.rows();
  reserve_step_input(st, step_rows);
  for (size_t i = 0; i < step.work.size(); ++i) {
    auto& w = step.work[i];
    if (auto err = check_work(st, w)) {
      out.done[i].error = std::move(err);
      continue;
    }
    if (w.rows() == 0)
      continue;
    if (!w.prompt.empty()) {
      try {
        prompt_rows(st, w.prompt, w.start, input_row);
      } catch (const std::exception& e) {  // model_error, or libtorch's c10::Error
        out.done[i].error = make_error(ceco_errc::compute_failed, e.what());
        continue;
      }
    }
    if (w.states.rows > 0)
      decode_step_rows(st, w.states, input_row + int64_t(w.prompt.size()));
    inputs[i] = st.step_input.narrow(0, input_row, w.rows());
    input_row += w.rows();
    seqs.push_back({&inputs[i], w.start, &w.ctx->cache});
    seq_work.push_back(i);
  }
  try {
    m.forward_sequences(seqs, st.split, last_layer(st));
  } catch (const std::exception& e) {  // model_error, or libtorch's c10::Error
    for (auto i : seq_work)
      out.done[i].error = make_error(ceco_errc::compute_failed, e.what());
    return;
  }
  for (auto i : seq_work) {
    auto& w = step.work[i];
    if (!st.stage)
      w.ctx->final_hidden.narrow(0, w.start, w.rows()).copy_(inputs[i]);
    w.ctx->computed = w.start + w.rows();
  }
  if (st.stage) {
    for (size_t i = 0; i < step.work.size(); ++i) {
      if (out.done[i].error)
        continue;
      auto& w = step.work[i];
      stage_work sw;
      sw.key = w.ctx->stage_key;
      sw.start = w.start;
      sw.rows = w.rows() > 0 ? encode_tensor(inputs[i], wire_dtype::f32)
                                  : tensor_blob{uint8_t(wire_dtype::f32), 0, m.config().n_embd, {}};
      sw.tokens_after = std::move(w.tokens_after);
      sw.drafts = std::move(w.drafts);
      sw.q = std::move(w.q);
      sw.sampling = params_of(w.sampling);
      staged.work.push_back(std::move(sw));
      staged_work.push_back(i);
    }
    return;
  }
  int64_t n_rows = 0;
  for (size_t i = 0; i < step.work.size(); ++i)
    if (!out.done[i].error)
      n_rows += int64_t(step.work[i].tokens_after.size());
  if (n_rows == 0)
    return;
  auto finals = st.chooser.rows(m, n_rows);
  std::vector<token_chooser::ask> asks;
  asks.reserve(size_t(n_rows));
  for (size_t i = 0; i < step.work.size(); ++i) {
    if (out.done[i].error)
      continue;
    const auto& w = step.work[i];
    size_t q_offset = 0;
    for (size_t j = 0; j < w.tokens_after.size(); ++j) {
      finals[int64_t(asks.size())].copy_(w.ctx->final_hidden[w.tokens_after[j]]);
      asks.push_back({w.tokens_after[j], j < w.drafts.size() ? w.drafts[j] : -1, &w.sampling,
                      entry_q(w.q, j, q_offset)});
    }
  }
  std::vector<int32_t> tokens;
  st.chooser.choose(m, asks, tokens);
  size_t next = 0;
  for (size_t i = 0; i < step.work.size(); ++i)
    if (!out.done[i].error)
      for (size_t j = 0; j < step.work[i].tokens_after.size(); ++j)
        out.done[i].tokens.push_back(tokens[next++]);
}

using self_ptr = cloud_layers_actor::stateful_pointer<cloud_layers_state>;

/// The reply now (measured mode), or once the profile's `cost_us` has passed.
template <class Reply>
caf::result<Reply> reply_after(self_ptr self, clock_type::time_point t0, int64_t cost_us,
                               Reply r) {
  if (!self->state.clock.profile())
    return r;
  auto rp = self->make_response_promise<Reply>();
  self->state.clock.hold(self, 0, t0, cost_us,  // one cloud device
                         [rp, r = std::move(r)]() mutable { rp.deliver(std::move(r)); });
  return rp;
}

/// Answers the held poll of generation `id` if it has something new: the
/// tokens after its `from`, or that it is done (or failed). A done
/// generation whose last tokens went out (or whose session ended) is
/// forgotten.
void answer_poll(cloud_layers_state& st, uint64_t id) {
  auto it = st.generating_by_id.find(id);
  if (it == st.generating_by_id.end())
    return;
  auto& g = it->second;
  if (!g.poll) {
    if (g.closed && g.done) {
      st.generation_of.erase(g.session);
      st.generating_by_id.erase(it);
    }
    return;
  }
  // Without a session (the cloud layers asked directly) nothing can poll:
  // the one reply comes at the end, with every token.
  if (!g.done && (g.session == 0 || int32_t(g.tokens.size()) <= g.from))
    return;
  if (g.failed) {
    g.poll->deliver(g.failed);
  } else {
    generate_reply r;
    const auto from = std::min<size_t>(size_t(g.from), g.tokens.size());
    r.tokens.assign(g.tokens.begin() + ptrdiff_t(from), g.tokens.end());
    r.cloud_us = g.cloud_us;
    r.session = g.session;
    r.done = g.done ? 1 : 0;
    g.cloud_us = 0;
    g.poll->deliver(std::move(r));
  }
  g.poll.reset();
  if (g.done) {
    st.generation_of.erase(g.session);
    st.generating_by_id.erase(it);
  }
}

/// One step of every generation in progress; once the step's time has
/// passed, answers the polls of those that made a token, then steps again
/// while any is left.
void step_generations(self_ptr self) {
  auto& st = self->state;
  auto t0 = clock_type::now();
  std::vector<generation_batch::finished> done;
  generation_batch::step_work work;
  try {
    work = st.generations->step(done);
  } catch (const std::exception& e) {  // model_error, or libtorch's c10::Error
    for (auto id : st.generations->clear()) {
      auto it = st.generating_by_id.find(id);
      it->second.done = true;
      it->second.failed = make_error(ceco_errc::compute_failed, e.what());
      answer_poll(st, id);
    }
    st.stepping = false;
    return;
  }
  int64_t cost = us_since(t0);
  if (auto* p = st.clock.profile()) {
    const int L = st.model->config().n_layer;
    cost = p->layers_us(p->cloud, L, work.rows, L) + p->heads_us(p->cloud, work.tokens);
  }
  // Every generation in progress took part in this step, and has an equal
  // share of it (as sessions of a catch-up step have in the context manager).
  size_t running = 0;
  for (auto& [id, g] : st.generating_by_id)
    running += g.done ? 0 : 1;
  const int64_t share = cost / int64_t(std::max<size_t>(1, running));
  std::vector<uint64_t> stepped;
  for (auto& [id, g] : st.generating_by_id)
    if (!g.done) {
      g.cloud_us += share;
      stepped.push_back(id);
    }
  // What this step made, taken now (the batch moves on at the next step)
  // and shown to polls once the step's time has passed.
  std::vector<std::pair<uint64_t, std::vector<int32_t>>> made;
  for (auto id : stepped)
    if (auto* t = st.generations->tokens_of(id))
      made.emplace_back(id, *t);
  auto finish = [self, done = std::move(done), stepped = std::move(stepped),
                 made = std::move(made)]() mutable {
    auto& st = self->state;
    for (auto& [id, tokens] : made)
      st.generating_by_id[id].tokens = std::move(tokens);
    for (auto& f : done) {
      auto& g = st.generating_by_id[f.id];
      g.tokens = std::move(f.tokens);
      g.done = true;
    }
    for (auto id : stepped)
      answer_poll(st, id);
    st.stepping = !st.generations->empty();
    if (st.stepping)
      self->send(self, generate_atom::value);  // after what has arrived meanwhile
  };
  if (!st.clock.profile())
    return finish();
  st.clock.hold(self, 0, t0, cost, std::move(finish));  // the one cloud device
}

/// The profile's cost of a step: its prompt rows through layers [0, split),
/// its catch-up rows through layers [split, L) and one classifier row per
/// token answered.
int64_t step_cost(const cloud_layers_state& st, const cloud_step& step,
                  const cloud_step_done& done) {
  const auto& p = *st.clock.profile();
  const int L = st.model->config().n_layer;
  int64_t rows = 0, prompt = 0, tokens = 0;
  for (size_t i = 0; i < step.work.size(); ++i)
    if (!done.done[i].error) {
      rows += step.work[i].rows();
      prompt += int64_t(step.work[i].prompt.size());
      tokens += int64_t(step.work[i].tokens_after.size());
    }
  return (prompt > 0 ? p.layers_us(p.cloud, st.split, prompt, L) : 0)
         + (rows > 0 ? p.layers_us(p.cloud, L - st.split, rows, L) : 0) + p.heads_us(p.cloud, tokens);
}

/// The rest of a step at the stages: their tokens (or errors) fill the
/// work items they carried. A stage that cannot be reached loses the
/// sessions of the step (their edges open new ones and upload again).
caf::result<cloud_step_done> on_to_stage(self_ptr self, cloud_step_done out, stage_step staged,
                                         std::vector<size_t> staged_work) {
  std::vector<size_t> asked;  // tokens each work item asks, one per tokens_after
  for (const auto& w : staged.work)
    asked.push_back(w.tokens_after.size());
  auto rp = self->make_response_promise<cloud_step_done>();
  auto deliver = [=](caf::expected<stage_step_done> reply) mutable {
    auto done = stage_results(reply, staged_work.size(), out.compute_us);
    for (size_t j = 0; j < staged_work.size(); ++j) {
      auto& d = out.done[staged_work[j]];
      if (done[j].error_code != 0)
        d.error = error_of(done[j]);
      else if (done[j].tokens.size() != asked[j])
        d.error = make_error(ceco_errc::compute_failed,
                             fmt::format("the layer stage answered {} tokens of {}",
                                         done[j].tokens.size(), asked[j]));
      else
        d.tokens = std::move(done[j].tokens);
    }
    rp.deliver(std::move(out));
  };
  self->request(self->state.stage, caf::infinite, std::move(staged))
    .then([=](stage_step_done& r) mutable { deliver(std::move(r)); },
          [=](caf::error& err) mutable { deliver(std::move(err)); });
  return rp;
}

/// A naive request's rows on through the stages, with no context kept.
caf::result<infer_reply> naive_on_to_stage(self_ptr self, clock_type::time_point t0,
                                           const at::Tensor& x, int32_t last,
                                           const sampler_options& sampling) {
  stage_step staged;
  stage_work w;
  w.rows = encode_tensor(x, wire_dtype::f32);
  w.tokens_after = {last};
  w.drafts = {-1};
  w.sampling = params_of(sampling);
  staged.work.push_back(std::move(w));
  const int64_t own_us = us_since(t0);
  auto rp = self->make_response_promise<infer_reply>();
  auto deliver = [=](caf::expected<stage_step_done> reply) mutable {
    int64_t cloud_us = own_us;
    auto done = stage_results(reply, 1, cloud_us);
    if (done[0].error_code != 0)
      rp.deliver(error_of(done[0]));
    else if (done[0].tokens.size() != 1)
      rp.deliver(make_error(ceco_errc::compute_failed,
                            fmt::format("the layer stage answered {} tokens of 1",
                                        done[0].tokens.size())));
    else
      rp.deliver(infer_reply{done[0].tokens[0], cloud_us});
  };
  self->request(self->state.stage, caf::infinite, std::move(staged))
    .then([=](stage_step_done& r) mutable { deliver(std::move(r)); },
          [=](caf::error& err) mutable { deliver(std::move(err)); });
  return rp;
}

cloud_layers_actor::behavior_type
cloud_layers_fn(self_ptr self, std::shared_ptr<const transformer> model, int split, int32_t eos,
                int max_generations, std::shared_ptr<const compute_profile> profile,
                std::shared_ptr<device_timeline> cloud_device, layer_stage_actor stage,
                int stage_from) {
  auto& st = self->state;
  st.stage = std::move(stage);
  st.stage_from = stage_from;
  st.clock = profile_clock(std::move(profile), std::move(cloud_device));
  st.model = std::move(model);
  st.split = split;
  st.eos = eos;
  st.max_generations = max_generations;
  const auto& cfg = st.model->config();
  st.generations = std::make_unique<generation_batch>(st.model);
  const int n_layer = cfg.n_layer;
  return {
    [=](open_atom) -> cloud_context_ptr {
      c10::InferenceMode guard;
      auto& m = *self->state.model;
      auto& st = self->state;
      auto ctx = std::make_shared<cloud_context>(m.make_cache(st.split, last_layer(st)));
      if (st.stage) {
        ctx->stage = st.stage;
        ctx->stage_key = wire::random_session_id();  // unique among the stage's senders
      } else {
        ctx->final_hidden = at::zeros({m.config().max_seq, m.config().n_embd},
                                      at::TensorOptions().dtype(at::kFloat).device(m.device()));
      }
      return ctx;
    },
    [=](cloud_step& step) -> caf::result<cloud_step_done> {
      auto t0 = clock_type::now();
      cloud_step_done out;
      out.done.resize(step.work.size());
      stage_step staged;
      std::vector<size_t> staged_work;
      run_step(self->state, step, out, staged, staged_work);
      out.compute_us = us_since(t0);
      if (!staged.work.empty())
        return on_to_stage(self, std::move(out), std::move(staged), std::move(staged_work));
      if (self->state.clock.profile())
        out.compute_us = step_cost(self->state, step, out);
      return reply_after(self, t0, out.compute_us, std::move(out));
    },
    [=](naive_work& work) -> caf::result<infer_reply> {
      auto t0 = clock_type::now();
      const auto& req = work.request;
      auto& m = *self->state.model;
      if (auto bad = req.states.check(m.config().n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "naive states: " + bad);
      if (req.states.rows > m.config().max_seq)
        return make_error(ceco_errc::bad_position,
                          fmt::format("{} positions exceed the context of {}", req.states.rows,
                                      m.config().max_seq));
      try {
        c10::InferenceMode guard;
        // Recomputes every position: no state is kept between requests.
        auto& st = self->state;
        auto cache = m.make_cache(st.split, last_layer(st), req.states.rows);
        auto x = on_device(req.states, m);
        m.forward_layers(x, 0, st.split, last_layer(st), cache);
        const int32_t last = req.states.rows - 1;
        if (st.stage)  // on through the stages, keeping no context there either
          return naive_on_to_stage(self, t0, x, last, work.sampling);
        st.chooser.rows(m, 1)[0].copy_(x[last]);
        std::vector<int32_t> token;
        st.chooser.choose(m, {{last, -1, &work.sampling}}, token);
        infer_reply r;
        r.token = token[0];
        r.cloud_us = us_since(t0);
        if (auto* p = self->state.clock.profile())
          r.cloud_us = p->layers_us(p->cloud, n_layer - self->state.split, req.states.rows, n_layer)
                       + p->heads_us(p->cloud, 1);
        return reply_after(self, t0, r.cloud_us, r);
      } catch (const std::exception& e) {  // model_error, or libtorch's c10::Error
        return make_error(ceco_errc::compute_failed, e.what());
      }
    },
    [=](generate_request& req) -> caf::result<generate_reply> {
      auto& st = self->state;
      const auto& cfg = st.model->config();
      if (auto known = st.generation_of.find(req.session); known != st.generation_of.end()) {
        // A poll for the next tokens of the session's generation.
        auto& g = st.generating_by_id[known->second];
        if (g.poll)
          return make_error(ceco_errc::session_limit,
                            "this session's generation already has a poll waiting");
        if (req.from < 0 || req.from > int32_t(g.tokens.size()))
          return make_error(ceco_errc::bad_position,
                            fmt::format("a poll from token {}; the generation has made {}",
                                        req.from, g.tokens.size()));
        auto rp = self->make_response_promise<generate_reply>();
        g.poll = rp;
        g.from = req.from;
        answer_poll(st, known->second);
        return rp;
      }
      if (req.prompt.empty() || int64_t(req.prompt.size()) > cfg.max_seq)
        return make_error(ceco_errc::bad_position,
                          fmt::format("a prompt of {} tokens; the context holds 1..{} (a poll "
                                      "needs a generation in progress in its session)",
                                      req.prompt.size(), cfg.max_seq));
      if (req.max_tokens < 1 || req.max_tokens > cfg.max_seq)
        return make_error(ceco_errc::bad_position,
                          fmt::format("max_tokens {}; expected 1..{} (the context)", req.max_tokens,
                                      cfg.max_seq));
      for (size_t i = 0; i < req.prompt.size(); ++i)
        if (req.prompt[i] < 0 || req.prompt[i] >= cfg.vocab_size)
          return make_error(ceco_errc::bad_tensor,
                            fmt::format("prompt token {} is id {}; the vocabulary holds 0..{}", i,
                                        req.prompt[i], cfg.vocab_size - 1));
      if (int64_t(st.generating_by_id.size()) >= st.max_generations)
        return make_error(ceco_errc::session_limit,
                          fmt::format("{} generations are in progress, the limit is {} "
                                      "(session.max_sessions)",
                                      st.generating_by_id.size(), st.max_generations));
      uint64_t id = 0;
      try {
        id = st.generations->add(std::move(req.prompt), req.max_tokens, st.eos,
                                 sampler_of(req.sampling));
      } catch (const std::exception& e) {
        return make_error(ceco_errc::compute_failed, e.what());
      }
      auto rp = self->make_response_promise<generate_reply>();
      cloud_layers_state::generating g;
      g.session = req.session;
      g.poll = rp;
      g.from = 0;
      st.generating_by_id.emplace(id, std::move(g));
      if (req.session != 0)
        st.generation_of[req.session] = id;
      if (!st.stepping) {
        st.stepping = true;
        self->send(self, generate_atom::value);
      }
      return rp;
    },
    [=](close_atom, uint64_t session) {
      auto& st = self->state;
      auto known = st.generation_of.find(session);
      if (known == st.generation_of.end())
        return;
      const auto id = known->second;
      auto& g = st.generating_by_id[id];
      g.closed = true;
      if (g.poll) {
        g.poll->deliver(make_error(ceco_errc::unknown_session, "the session was closed"));
        g.poll.reset();
      }
      answer_poll(st, id);  // forgotten now if done, else once done
    },
    [=](generate_atom) { step_generations(self); },
    [=](deliver_atom, uint64_t id) { self->state.clock.release(id); },
  };
}

} // namespace

cloud_layers_actor spawn_cloud_layers(caf::actor_system& sys,
                                      std::shared_ptr<const transformer> model, int split,
                                      int32_t eos, int max_generations,
                                      std::shared_ptr<const compute_profile> profile,
                                      std::shared_ptr<device_timeline> cloud_device,
                                      layer_stage_actor stage, int stage_from) {
  return sys.spawn(cloud_layers_fn, std::move(model), split, eos, max_generations,
                   std::move(profile), std::move(cloud_device), std::move(stage), stage_from);
}

} // namespace ceco
