#include "actors/edge_actors.hpp"

#include <chrono>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/exit_heads.hpp"
#include "model/transformer.hpp"

namespace ceco {

namespace {

using clock_type = std::chrono::steady_clock;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

/// The last row of x [T, d] as fp32 floats appended to `out`.
void append_last_row(const at::Tensor& x, std::vector<float>& out) {
  auto row = x[x.size(0) - 1].to(at::kCPU).contiguous();
  out.insert(out.end(), row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
}

// -- edge layers ----------------------------------------------------------------

struct edge_layers_state {
  std::shared_ptr<const transformer> model;
  int split = 0;
  std::vector<int> exits;
  std::unordered_map<uint64_t, std::unique_ptr<kv_cache>> caches;
  static inline const char* name = "edge_layers";
};

edge_layers_actor::behavior_type
edge_layers_fn(edge_layers_actor::stateful_pointer<edge_layers_state> self,
               std::shared_ptr<const transformer> model, int split, std::vector<int> exits) {
  self->state.model = std::move(model);
  self->state.split = split;
  self->state.exits = std::move(exits);
  return {
    [=](forward_atom, uint64_t session, int32_t pos,
        std::vector<int32_t>& tokens) -> caf::result<edge_output> {
      auto t0 = clock_type::now();
      auto& st = self->state;
      const auto& m = *st.model;
      if (tokens.empty())
        return make_error(ceco_errc::bad_position, "edge forward of no tokens");
      auto& cache = st.caches[session];
      if (!cache)
        cache = std::make_unique<kv_cache>(m.make_cache(0, st.split));
      try {
        c10::InferenceMode guard;
        auto x = m.embed(tokens);
        std::vector<float> exit_rows;
        m.forward_to_exits(x, pos, 0, st.split, *cache, st.exits,
                           [&](size_t, const at::Tensor& h) { append_last_row(h, exit_rows); });
        auto cpu = x.to(at::kCPU).contiguous();
        const int32_t d = m.config().n_embd;
        edge_output out;
        out.split = make_blob(cpu.data_ptr<float>(), int32_t(tokens.size()), d, wire_dtype::f32);
        if (!st.exits.empty())
          out.exit_states = make_blob(exit_rows.data(), int32_t(st.exits.size()), d,
                                      wire_dtype::f32);
        out.compute_us = us_since(t0);
        return out;
      } catch (const model_error& e) {
        return make_error(ceco_errc::compute_failed, e.what());
      }
    },
    [=](close_atom, uint64_t session) { self->state.caches.erase(session); },
  };
}

// -- exit evaluator -----------------------------------------------------------

struct exit_evaluator_state {
  exit_heads heads;
  std::vector<int> layers;
  int n_embd = 0;
  exit_policy policy;
  static inline const char* name = "exit_evaluator";
};

exit_evaluator_actor::behavior_type
exit_evaluator_fn(exit_evaluator_actor::stateful_pointer<exit_evaluator_state> self,
                  exit_heads heads, int n_embd, exit_policy policy) {
  self->state.heads = std::move(heads);
  self->state.layers = self->state.heads.layers();
  self->state.n_embd = n_embd;
  self->state.policy = policy;
  return {
    [=](evaluate_atom, uint64_t, tensor_blob& states) -> caf::result<exit_decision> {
      auto t0 = clock_type::now();
      auto& st = self->state;
      if (auto bad = states.check(st.n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "exit states: " + bad);
      if (states.rows != int32_t(st.heads.size()))
        return make_error(ceco_errc::bad_tensor,
                          fmt::format("exit states have {} rows, expected one per exit ({})",
                                      states.rows, st.heads.size()));
      c10::InferenceMode guard;
      auto x = at::empty({states.rows, states.cols}, at::kFloat);
      read_blob(states, x.data_ptr<float>());
      auto device = st.heads[0].norm.device();
      if (!device.is_cpu())
        x = x.to(device);
      exit_decision d;
      std::vector<int32_t> tokens;
      for (size_t i = 0; i < st.heads.size(); ++i) {
        auto r = st.heads.read(i, x.narrow(0, int64_t(i), 1));
        d.confidence.push_back(r.confidence);
        tokens.push_back(r.token);
      }
      auto choice = decide_exit(st.layers, d.confidence, tokens, st.policy.threshold,
                                st.policy.min_exit_layer);
      d.exit_layer = choice.layer;
      d.token = choice.token;
      d.compute_us = us_since(t0);
      return d;
    },
  };
}

// -- uploader -------------------------------------------------------------------

struct uploader_state {
  upload_sink cloud;
  wire_dtype dtype = wire_dtype::f16;
  std::chrono::milliseconds timeout{30'000};
  std::vector<float> rows;  // conversion buffer, reused
  static inline const char* name = "uploader";
};

uploader_actor::behavior_type uploader_fn(uploader_actor::stateful_pointer<uploader_state> self,
                                          upload_sink cloud, wire_dtype dtype,
                                          std::chrono::milliseconds timeout) {
  self->state.cloud = std::move(cloud);
  self->state.dtype = dtype;
  self->state.timeout = timeout;
  return {
    [=](upload_atom, uint64_t session, int32_t start,
        tensor_blob& states) -> caf::result<int32_t> {
      auto& st = self->state;
      if (auto bad = states.check(0); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "upload: " + bad);
      upload_msg msg{session, start, {}};
      if (states.dtype == uint8_t(st.dtype)) {
        msg.states = std::move(states);
      } else {
        st.rows.resize(size_t(states.rows) * size_t(states.cols));
        read_blob(states, st.rows.data());
        msg.states = make_blob(st.rows.data(), states.rows, states.cols, st.dtype);
      }
      auto rp = self->make_response_promise<int32_t>();
      self->request(st.cloud, st.timeout, std::move(msg))
        .then([=](int32_t held) mutable { rp.deliver(held); },
              [=](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
  };
}

// -- stand-ins for actors placed on the cloud -------------------------------------

exit_evaluator_actor::behavior_type remote_evaluator_fn(exit_evaluator_actor::pointer self,
                                                        cloud_api cloud) {
  return {
    [=](evaluate_atom a, uint64_t session, tensor_blob& states) -> caf::result<exit_decision> {
      return self->delegate(cloud, a, session, std::move(states));
    },
  };
}

uploader_actor::behavior_type remote_uploader_fn(uploader_actor::pointer self, cloud_api cloud) {
  return {
    [=](upload_atom a, uint64_t session, int32_t start,
        tensor_blob& states) -> caf::result<int32_t> {
      return self->delegate(cloud, a, session, start, std::move(states));
    },
  };
}

} // namespace

exit_evaluator_actor spawn_remote_evaluator(caf::actor_system& sys, cloud_api cloud) {
  return sys.spawn(remote_evaluator_fn, std::move(cloud));
}

uploader_actor spawn_remote_uploader(caf::actor_system& sys, cloud_api cloud) {
  return sys.spawn(remote_uploader_fn, std::move(cloud));
}

edge_layers_actor spawn_edge_layers(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int split,
                                    std::vector<int> exits) {
  return sys.spawn(edge_layers_fn, std::move(model), split, std::move(exits));
}

exit_evaluator_actor spawn_exit_evaluator(caf::actor_system& sys, const exit_heads& heads,
                                          int n_embd, exit_policy policy) {
  return sys.spawn(exit_evaluator_fn, heads, n_embd, policy);
}

uploader_actor spawn_uploader(caf::actor_system& sys, upload_sink cloud, wire_dtype dtype,
                              std::chrono::milliseconds timeout) {
  return sys.spawn(uploader_fn, std::move(cloud), dtype, timeout);
}

} // namespace ceco
