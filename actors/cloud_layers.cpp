#include "actors/cloud_layers.hpp"

#include <chrono>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/generation.hpp"
#include "model/sampler.hpp"
#include "model/transformer.hpp"

namespace ceco {

struct cloud_context {
  explicit cloud_context(kv_cache c) : cache(std::move(c)) {
    // nop
  }
  kv_cache cache;           // layers [split, L)
  at::Tensor final_hidden;  // [capacity, n_embd]: last layer's output per position
  int32_t computed = 0;     // positions [0, computed) went through every cloud layer
};

int64_t cloud_context_bytes(const cloud_context& ctx) {
  return ctx.cache.bytes() + (ctx.final_hidden.defined() ? int64_t(ctx.final_hidden.nbytes()) : 0);
}

namespace {

using clock_type = std::chrono::steady_clock;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

struct cloud_layers_state {
  std::shared_ptr<const transformer> model;
  int split = 0;
  int32_t eos = 2;
  at::Tensor logits;  // [vocab], reused by every token request
  static inline const char* name = "cloud_layers";
};

/// fp32 [rows, n_embd] tensor on the model's device from a checked blob.
at::Tensor to_tensor(const tensor_blob& b, const transformer& m) {
  auto x = at::empty({b.rows, b.cols}, at::kFloat);
  read_blob(b, x.data_ptr<float>());
  return m.device().is_cpu() ? x : x.to(m.device());
}

int32_t final_token(cloud_layers_state& st, const at::Tensor& hidden_row) {
  st.model->logits_into(hidden_row, st.logits);
  auto cpu = st.logits.is_cpu() ? st.logits : st.logits.to(at::kCPU);
  return argmax(cpu.data_ptr<float>(), int(cpu.numel()));
}

cloud_layers_actor::behavior_type
cloud_layers_fn(cloud_layers_actor::stateful_pointer<cloud_layers_state> self,
                std::shared_ptr<const transformer> model, int split, int32_t eos) {
  auto& st = self->state;
  st.model = std::move(model);
  st.split = split;
  st.eos = eos;
  const auto& cfg = st.model->config();
  st.logits = at::empty({cfg.vocab_size}, at::TensorOptions().dtype(at::kFloat).device(st.model->device()));
  const int n_layer = cfg.n_layer;
  return {
    [=](open_atom) -> cloud_context_ptr {
      c10::InferenceMode guard;
      auto& m = *self->state.model;
      auto ctx = std::make_shared<cloud_context>(m.make_cache(self->state.split, n_layer));
      ctx->final_hidden = at::zeros({m.config().max_seq, m.config().n_embd},
                                    at::TensorOptions().dtype(at::kFloat).device(m.device()));
      return ctx;
    },
    [=](catchup_atom, cloud_context_ptr& ctx, int32_t start,
        tensor_blob& states) -> caf::result<int64_t> {
      auto t0 = clock_type::now();
      auto& m = *self->state.model;
      if (auto bad = states.check(m.config().n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "catch-up states: " + bad);
      if (start != ctx->computed)
        return make_error(ceco_errc::bad_position,
                          fmt::format("catch-up from position {}, but {} are computed", start,
                                      ctx->computed));
      try {
        c10::InferenceMode guard;
        auto x = to_tensor(states, m);
        m.forward_layers(x, start, self->state.split, n_layer, ctx->cache);
        ctx->final_hidden.narrow(0, start, states.rows).copy_(x);
        ctx->computed = start + states.rows;
      } catch (const model_error& e) {
        return make_error(ceco_errc::compute_failed, e.what());
      }
      return us_since(t0);
    },
    [=](token_atom, cloud_context_ptr& ctx, int32_t pos) -> caf::result<infer_reply> {
      auto t0 = clock_type::now();
      if (pos < 0 || pos >= ctx->computed)
        return make_error(ceco_errc::bad_position,
                          fmt::format("token after position {} requested, positions 0..{} are "
                                      "computed", pos, ctx->computed - 1));
      c10::InferenceMode guard;
      infer_reply r;
      r.token = final_token(self->state, ctx->final_hidden.narrow(0, pos, 1));
      r.cloud_us = us_since(t0);
      return r;
    },
    [=](naive_request& req) -> caf::result<infer_reply> {
      auto t0 = clock_type::now();
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
        auto cache = m.make_cache(self->state.split, n_layer, req.states.rows);
        auto x = to_tensor(req.states, m);
        m.forward_layers(x, 0, self->state.split, n_layer, cache);
        infer_reply r;
        r.token = final_token(self->state, x);
        r.cloud_us = us_since(t0);
        return r;
      } catch (const model_error& e) {
        return make_error(ceco_errc::compute_failed, e.what());
      }
    },
    [=](generate_request& req) -> caf::result<generate_reply> {
      auto t0 = clock_type::now();
      try {
        generation_options opts;
        opts.max_tokens = req.max_tokens;
        opts.eos = self->state.eos;
        auto r = generate(*self->state.model, req.prompt, opts);
        return generate_reply{std::move(r.tokens), us_since(t0)};
      } catch (const model_error& e) {
        return make_error(ceco_errc::compute_failed, e.what());
      }
    },
  };
}

} // namespace

cloud_layers_actor spawn_cloud_layers(caf::actor_system& sys,
                                      std::shared_ptr<const transformer> model, int split,
                                      int32_t eos) {
  return sys.spawn(cloud_layers_fn, std::move(model), split, eos);
}

} // namespace ceco
