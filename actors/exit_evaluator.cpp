#include "actors/exit_evaluator.hpp"

#include <chrono>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "actors/hidden_rows.hpp"
#include "actors/profile_clock.hpp"
#include "model/exit_heads.hpp"
#include "model/sampler.hpp"

namespace ceco {

static_assert(max_draft_candidates == proto::max_candidates,
              "a draft distribution's bound on the wire is the sampler's");

namespace {

using clock_type = sim_clock;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

struct exit_evaluator_state {
  exit_heads heads;
  std::vector<int> layers;
  int n_embd = 0;
  exit_policy policy;
  std::vector<float> thresholds;  // per exit: policy.threshold, else the heads' own
  profile_clock clock;  // profile mode: the profile's head cost per evaluation
  bool on_cloud = false;
  uint64_t next_device = 0;
  std::vector<std::pair<float, int32_t>> scratch;  // the sampler's, reused
  std::vector<at::Tensor> logits;  // per exit, the last evaluation's (sampled from)
  static inline const char* name = "exit_evaluator";
};

exit_evaluator_actor::behavior_type
exit_evaluator_fn(exit_evaluator_actor::stateful_pointer<exit_evaluator_state> self,
                  exit_heads heads, int n_embd, exit_policy policy,
                  std::shared_ptr<const compute_profile> profile, bool on_cloud,
                  std::shared_ptr<device_timeline> cloud_device) {
  self->state.heads = std::move(heads);
  self->state.clock = profile_clock(std::move(profile), std::move(cloud_device));
  self->state.on_cloud = on_cloud;
  self->state.layers = self->state.heads.layers();
  self->state.n_embd = n_embd;
  self->state.policy = policy;
  self->state.thresholds = self->state.heads.thresholds(policy.threshold);
  return {
    [=](evaluate_request& r) -> caf::result<exit_decision> {
      auto t0 = clock_type::now();
      const tensor_blob& states = r.exit_states;
      auto& st = self->state;
      if (auto bad = states.check(st.n_embd); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "exit states: " + bad);
      if (states.rows != int32_t(st.heads.size()))
        return make_error(ceco_errc::bad_tensor,
                          fmt::format("exit states have {} rows, expected one per exit ({})",
                                      states.rows, st.heads.size()));
      c10::InferenceMode guard;
      auto x = to_tensor(states);
      auto device = st.heads[0].norm.device();
      if (!device.is_cpu())
        x = x.to(device);
      exit_decision d;
      std::vector<int32_t> tokens;
      st.logits.resize(st.heads.size());
      for (size_t i = 0; i < st.heads.size(); ++i) {
        auto r = st.heads.read(i, x.narrow(0, int64_t(i), 1), &st.logits[i]);
        d.confidence.push_back(r.confidence);
        tokens.push_back(r.token);
      }
      auto choice = decide_exit(st.layers, d.confidence, tokens, st.thresholds,
                                st.policy.min_exit_layer);
      d.exit_layer = choice.layer;
      d.token = choice.token;
      d.draft = choice.token;
      if (const auto asked = sampler_of(r.sampling); samples(asked)) {
        // The firing exit's distribution (or the deepest exit's) at its
        // sampling temperature, sampled with the edge's draw for this
        // position (docs/design.md §5); a draft from the same distribution
        // cut to its likeliest tokens. The logits are read()'s.
        const size_t i = choice.index >= 0 ? size_t(choice.index) : st.heads.size() - 1;
        const auto opts = st.heads.sampling_options(i, asked);
        const auto& logits = st.logits[i];
        const auto u = position_uniform(opts.seed, sample_stream::edge, r.pos);
        const int n = int(logits.numel());
        // Drafting needs the evaluator on the edge: one on the cloud sends none.
        if (st.policy.draft_candidates > 0 && !st.on_cloud) {
          auto both = sample_with_draft(logits.data_ptr<float>(), n, opts,
                                        st.policy.draft_candidates, u, d.q_tokens, d.q_weights,
                                        st.scratch);
          d.token = both.token;
          d.draft = both.draft;
        } else {
          d.token = sample_at(logits.data_ptr<float>(), n, opts, u, st.scratch);
          d.draft = d.token;
        }
      }
      d.compute_us = us_since(t0);
      if (auto* p = st.clock.profile()) {
        // Each exit head is a matrix of its own, over one row.
        d.compute_us = int64_t(st.heads.size()) * p->heads_us(st.on_cloud ? p->cloud : p->edge, 1);
        auto rp = self->make_response_promise<exit_decision>();
        auto deliver = [rp, d]() mutable { rp.deliver(std::move(d)); };
        if (st.on_cloud) {
          st.clock.hold(self, 0, t0, d.compute_us, std::move(deliver));  // the cloud's GPU
          return rp;
        }
        // On the edge each evaluation is on a device of its own: a response
        // never asks two at once, and each response is an edge device.
        st.clock.hold(self, st.next_device++, t0, d.compute_us, std::move(deliver));
        st.clock.forget(st.next_device - 1);
        return rp;
      }
      return d;
    },
    [=](deliver_atom, uint64_t id) { self->state.clock.release(id); },
  };
}

exit_evaluator_actor::behavior_type remote_evaluator_fn(exit_evaluator_actor::pointer self,
                                                        cloud_api cloud) {
  return {
    [=](evaluate_request& r) -> caf::result<exit_decision> {
      return self->delegate(cloud, std::move(r));
    },
    [](deliver_atom, uint64_t) {},  // no timer of its own
  };
}

} // namespace

exit_evaluator_actor spawn_exit_evaluator(caf::actor_system& sys, const exit_heads& heads,
                                          int n_embd, exit_policy policy,
                                          std::shared_ptr<const compute_profile> profile,
                                          bool on_cloud,
                                          std::shared_ptr<device_timeline> cloud_device) {
  return sys.spawn(exit_evaluator_fn, heads, n_embd, policy, std::move(profile), on_cloud,
                   std::move(cloud_device));
}

exit_evaluator_actor spawn_remote_evaluator(caf::actor_system& sys, cloud_api cloud) {
  return sys.spawn(remote_evaluator_fn, std::move(cloud));
}

} // namespace ceco
