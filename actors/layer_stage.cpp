#include "actors/layer_stage.hpp"

#include <chrono>
#include <thread>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <fmt/format.h>

#include "actors/cluster_port.hpp"
#include "actors/hidden_rows.hpp"
#include "actors/token_chooser.hpp"
#include "model/transformer.hpp"

namespace ceco {

namespace {

using clock_type = std::chrono::steady_clock;

/// One session's state on a stage: the KV cache of the stage's layers and,
/// at the last stage, the final states of its computed positions.
struct stage_context {
  explicit stage_context(kv_cache c) : cache(std::move(c)) {
    // nop
  }
  kv_cache cache;
  at::Tensor final_hidden;  // [capacity, n_embd], last stage only
  int32_t computed = 0;
  caf::actor_addr owner;    // the actor that sends its work (its contexts go when it does)
};

struct layer_stage_state {
  std::shared_ptr<const transformer> model;
  int first = 0;
  int last = 0;
  layer_stage_actor next;  // none: the last stage
  stage_hello mine;
  std::unordered_map<uint64_t, std::unique_ptr<stage_context>> contexts;
  token_chooser chooser;
  greeted_nodes greeted;   // remote nodes whose stage_hello was answered
  static inline const char* name = "layer_stage";
};

using stage_ptr = layer_stage_actor::stateful_pointer<layer_stage_state>;

stage_work_done failed(ceco_errc code, std::string text) {
  stage_work_done d;
  d.error_code = uint8_t(code);
  d.error = std::move(text);
  return d;
}

/// The context work `w` runs in (made for a session's first rows; `temp`
/// for key 0), or why it cannot run.
stage_context* context_for(stage_ptr self, stage_work& w, std::unique_ptr<stage_context>& temp,
                           stage_work_done& why) {
  auto& st = self->state;
  const auto& m = *st.model;
  const auto& cfg = m.config();
  if (w.rows.rows > 0) {
    if (auto bad = w.rows.check(cfg.n_embd); !bad.empty()) {
      why = failed(ceco_errc::bad_tensor, "stage rows: " + bad);
      return nullptr;
    }
    if (w.start < 0 || int64_t(w.start) + w.rows.rows > cfg.max_seq) {
      why = failed(ceco_errc::bad_position,
                   fmt::format("stage rows {}..{} exceed the context of {}", w.start,
                               int64_t(w.start) + w.rows.rows - 1, cfg.max_seq));
      return nullptr;
    }
  }
  if (w.key == 0) {  // nothing kept: every position from 0 in this work
    if (w.start != 0) {
      why = failed(ceco_errc::bad_position, "stage work without a context must start at 0");
      return nullptr;
    }
    temp = std::make_unique<stage_context>(m.make_cache(st.first, st.last, std::max(1, w.rows.rows)));
    return temp.get();
  }
  auto& slot = st.contexts[w.key];
  if (!slot) {
    slot = std::make_unique<stage_context>(m.make_cache(st.first, st.last));
    slot->owner = caf::actor_cast<caf::actor_addr>(self->current_sender());
    if (!st.next)
      slot->final_hidden = at::zeros({cfg.max_seq, cfg.n_embd},
                                     at::TensorOptions().dtype(at::kFloat).device(m.device()));
    if (slot->owner && slot->owner != self->address())
      self->monitor(slot->owner);
  }
  auto& ctx = *slot;
  if (w.rows.rows > 0) {
    if (w.start > ctx.computed) {
      why = failed(ceco_errc::bad_position,
                   fmt::format("stage rows from position {}, but {} are computed", w.start,
                               ctx.computed));
      return nullptr;
    }
    // Rows from an earlier position: the session rolled back to there.
    ctx.cache.truncate(w.start);
    ctx.computed = w.start;
  }
  const int32_t computed = ctx.computed + w.rows.rows;
  if (auto bad = w.q.check(w.tokens_after.size(), st.model->config().vocab_size); !bad.empty()) {
    why = failed(ceco_errc::bad_tensor, "stage work: " + bad);
    return nullptr;
  }
  for (auto pos : w.tokens_after)
    if (pos < 0 || (!st.next && pos >= (w.key == 0 ? w.rows.rows : computed))) {
      why = failed(ceco_errc::bad_position,
                   fmt::format("token after position {} asked, positions 0..{} are computed",
                               pos, computed - 1));
      return nullptr;
    }
  return &ctx;
}

caf::result<stage_step_done> run_stage(stage_ptr self, stage_step& step) {
  auto& st = self->state;
  const auto& m = *st.model;
  const auto t0 = clock_type::now();
  c10::InferenceMode guard;
  const size_t n = step.work.size();
  stage_step_done out;
  out.done.resize(n);
  std::vector<std::unique_ptr<stage_context>> temps(n);
  std::vector<stage_context*> ctxs(n, nullptr);
  std::vector<at::Tensor> inputs(n);
  std::vector<transformer::sequence_step> seqs;
  std::vector<size_t> seq_work;
  for (size_t i = 0; i < n; ++i) {
    auto& w = step.work[i];
    ctxs[i] = context_for(self, w, temps[i], out.done[i]);
    if (!ctxs[i] || w.rows.rows == 0)
      continue;
    inputs[i] = to_tensor(w.rows);
    if (!m.device().is_cpu())
      inputs[i] = inputs[i].to(m.device());
    seqs.push_back({&inputs[i], w.start, &ctxs[i]->cache});
    seq_work.push_back(i);
  }
  try {
    m.forward_sequences(seqs, st.first, st.last);
  } catch (const std::exception& e) {  // model_error, or libtorch's c10::Error
    for (auto i : seq_work) {
      out.done[i] = failed(ceco_errc::compute_failed, e.what());
      ctxs[i] = nullptr;
    }
  }
  for (auto i : seq_work)
    if (ctxs[i])
      ctxs[i]->computed = step.work[i].start + step.work[i].rows.rows;
  auto own_us = [t0] {
    return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
  };
  if (st.next) {  // the rows go on, the positions asked with them
    stage_step onward;
    std::vector<size_t> carried;
    for (size_t i = 0; i < n; ++i) {
      if (!ctxs[i])
        continue;
      auto& w = step.work[i];
      if (w.rows.rows > 0)
        w.rows = encode_tensor(inputs[i], wire_dtype::f32);
      onward.work.push_back(std::move(w));
      carried.push_back(i);
    }
    out.compute_us = own_us();
    if (onward.work.empty())
      return out;
    auto rp = self->make_response_promise<stage_step_done>();
    auto deliver = [=](caf::expected<stage_step_done> reply) mutable {
      auto done = stage_results(reply, carried.size(), out.compute_us);
      for (size_t j = 0; j < carried.size(); ++j)
        out.done[carried[j]] = std::move(done[j]);
      rp.deliver(std::move(out));
    };
    self->request(st.next, caf::infinite, std::move(onward))
      .then([=](stage_step_done& r) mutable { deliver(std::move(r)); },
            [=](caf::error& err) mutable { deliver(std::move(err)); });
    return rp;
  }
  // The last stage: final states kept, then every token asked, in one product.
  std::vector<token_chooser::ask> asks;
  std::vector<sampler_options> sampling(n);
  int64_t rows = 0;
  for (size_t i = 0; i < n; ++i)
    if (ctxs[i])
      rows += int64_t(step.work[i].tokens_after.size());
  auto finals = st.chooser.rows(m, std::max<int64_t>(rows, 1));
  for (size_t i = 0; i < n; ++i) {
    if (!ctxs[i])
      continue;
    auto& w = step.work[i];
    sampling[i] = sampler_of(w.sampling);
    const bool kept = w.key != 0;
    if (kept && w.rows.rows > 0)
      ctxs[i]->final_hidden.narrow(0, w.start, w.rows.rows).copy_(inputs[i]);
    size_t q_offset = 0;
    for (size_t j = 0; j < w.tokens_after.size(); ++j) {
      const auto pos = w.tokens_after[j];
      finals[int64_t(asks.size())].copy_(kept ? ctxs[i]->final_hidden[pos] : inputs[i][pos]);
      asks.push_back({pos, j < w.drafts.size() ? w.drafts[j] : -1, &sampling[i],
                      entry_q(w.q, j, q_offset)});
    }
  }
  std::vector<int32_t> tokens;
  st.chooser.choose(m, asks, tokens);
  size_t next = 0;
  for (size_t i = 0; i < n; ++i)
    if (ctxs[i])
      for (size_t j = 0; j < step.work[i].tokens_after.size(); ++j)
        out.done[i].tokens.push_back(tokens[next++]);
  out.compute_us = own_us();
  return out;
}

layer_stage_actor::behavior_type layer_stage_fn(stage_ptr self,
                                                std::shared_ptr<const transformer> model,
                                                int first, int last, layer_stage_actor next,
                                                uint64_t fingerprint) {
  auto& st = self->state;
  st.model = std::move(model);
  st.first = first;
  st.last = last;
  st.next = std::move(next);
  st.mine = {fingerprint, st.model->config().n_layer, first};
  // A sender that went away (its node lost, or stopped) takes its
  // sessions' contexts with it.
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    for (auto i = st.contexts.begin(); i != st.contexts.end();) {
      if (i->second->owner != dm.source) {
        ++i;
        continue;
      }
      if (st.next)
        caf::anon_send(st.next, close_atom::value, i->first);
      i = st.contexts.erase(i);
    }
  });
  self->set_default_handler([](caf::scheduled_actor*, caf::message_view& x) -> caf::result<caf::message> {
    return make_error(ceco_errc::unknown_message,
                      fmt::format("a layer stage does not handle this message of {} element(s)",
                                  x.content().size()));
  });
  return {
    [=](stage_hello& h) -> caf::result<stage_hello> {
      const auto& mine = self->state.mine;
      if (h.fingerprint != mine.fingerprint || h.n_layer != mine.n_layer || h.first != mine.first)
        return make_error(ceco_errc::handshake_failed,
                          fmt::format("the layer stage runs layers {}.. of a model of {} layers "
                                      "(fingerprint {:016x}); the sender expects layers {}.. of "
                                      "{} (fingerprint {:016x})",
                                      mine.first, mine.n_layer, mine.fingerprint, h.first,
                                      h.n_layer, h.fingerprint));
      self->state.greeted.add(self->current_sender());
      return mine;
    },
    [=](stage_step& step) -> caf::result<stage_step_done> {
      if (auto err = self->state.greeted.refuse_stranger(self->current_sender(), self->node(),
                                                         "this node"))
        return err;
      return run_stage(self, step);
    },
    // Sent anonymously, from a context's destructor: the key, 64 random
    // bits only its session's node knows, is the authority.
    [=](close_atom, uint64_t key) {
      auto& st = self->state;
      if (st.contexts.erase(key) > 0 && st.next)
        caf::anon_send(st.next, close_atom::value, key);
    },
  };
}

/// The stage on `address`, its hello checked; retried for a while, as a
/// stage node may start after the node that sends it work.
layer_stage_actor connect_stage(caf::actor_system& sys, const settings& s,
                                const std::string& address, const stage_hello& mine) {
  auto [host, port] = *split_host_port(address);  // checked by the settings
  std::string why;
  for (int attempt = 0; attempt < 40; ++attempt) {
    if (attempt > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    auto stage = connect_on_cluster_port<layer_stage_actor>(sys, s, host, uint16_t(port));
    if (!stage) {
      why = describe(stage.error());
      continue;
    }
    caf::scoped_actor self{sys};
    std::string refused;
    self->request(*stage, std::chrono::seconds(10), mine)
      .receive([&](stage_hello&) {}, [&](caf::error& err) { refused = describe(err); });
    if (refused.empty())
      return *stage;
    throw config_error(fmt::format("layer stage {} (cluster.stage_hosts) refused: {}", address,
                                   refused));
  }
  throw config_error(fmt::format("layer stage {} (cluster.stage_hosts): {}", address, why));
}

} // namespace

std::vector<stage_work_done> stage_results(caf::expected<stage_step_done>& reply, size_t sent,
                                           int64_t& compute_us) {
  std::string why;
  if (!reply)
    why = "the next layer stage failed: " + describe(reply.error());
  else if (reply->done.size() != sent)
    why = fmt::format("the next layer stage answered {} work items of {}", reply->done.size(),
                      sent);
  if (why.empty()) {
    compute_us += reply->compute_us;
    return std::move(reply->done);
  }
  return std::vector<stage_work_done>(sent, failed(ceco_errc::session_lost, why));
}

layer_stage_actor spawn_layer_stage(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int first,
                                    int last, layer_stage_actor next, uint64_t fingerprint) {
  return sys.spawn(layer_stage_fn, std::move(model), first, last, std::move(next), fingerprint);
}

layer_stage_actor stage_chain(caf::actor_system& sys, const settings& s,
                              std::shared_ptr<const transformer> model, uint64_t fingerprint,
                              size_t from) {
  const auto& bounds = s.placement.cloud_stages;
  if (from >= bounds.size())
    return {};
  const int n_layer = model->config().n_layer;
  if (from < s.cluster.stage_hosts.size())  // that node runs this stage and places the rest
    return connect_stage(sys, s, s.cluster.stage_hosts[from],
                         stage_hello{fingerprint, n_layer, bounds[from]});
  auto next = stage_chain(sys, s, model, fingerprint, from + 1);
  const int last = from + 1 < bounds.size() ? bounds[from + 1] : n_layer;
  return spawn_layer_stage(sys, std::move(model), bounds[from], last, std::move(next), fingerprint);
}

uint16_t publish_layer_stage(caf::actor_system& sys, const settings& s,
                             const layer_stage_actor& stage) {
  return publish_on_cluster_port(sys, s, stage);
}

void stop_layer_stage(caf::actor_system& sys, const settings& s, const layer_stage_actor& stage,
                      uint16_t port) {
  stop_on_cluster_port(sys, s, stage, port);
}

} // namespace ceco
