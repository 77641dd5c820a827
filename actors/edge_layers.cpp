#include "actors/edge_layers.hpp"

#include <chrono>
#include <unordered_map>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "actors/hidden_rows.hpp"
#include "actors/profile_clock.hpp"
#include "model/transformer.hpp"

namespace ceco {

namespace {

using clock_type = sim_clock;

int64_t us_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
}

/// The last row of x [T, d] as fp32 floats appended to `out`.
void append_last_row(const at::Tensor& x, std::vector<float>& out) {
  auto row = x[x.size(0) - 1].to(at::kCPU).contiguous();
  out.insert(out.end(), row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
}

struct edge_layers_state {
  std::shared_ptr<const transformer> model;
  int split = 0;
  std::vector<int> exits;
  std::unordered_map<uint64_t, std::unique_ptr<kv_cache>> caches;
  profile_clock clock;  // profile mode: the profile's time for each forward
  std::shared_ptr<edge_step_stops> stops;  // may be null: steps run to their end
  static inline const char* name = "edge_layers";
};

edge_layers_actor::behavior_type
edge_layers_fn(edge_layers_actor::stateful_pointer<edge_layers_state> self,
               std::shared_ptr<const transformer> model, int split, std::vector<int> exits,
               std::shared_ptr<const compute_profile> profile,
               std::shared_ptr<edge_step_stops> stops) {
  self->state.model = std::move(model);
  self->state.clock = profile_clock(std::move(profile));
  self->state.split = split;
  self->state.exits = std::move(exits);
  self->state.stops = std::move(stops);
  return {
    [=](forward_atom, uint64_t session, int32_t pos, std::vector<int32_t>& tokens,
        uint8_t split_dtype, uint64_t ticket) -> caf::result<edge_output> {
      auto t0 = clock_type::now();
      auto& st = self->state;
      const auto& m = *st.model;
      if (tokens.empty())
        return make_error(ceco_errc::bad_position, "edge forward of no tokens");
      if (split_dtype != uint8_t(wire_dtype::f32) && split_dtype != uint8_t(wire_dtype::f16))
        return make_error(ceco_errc::bad_tensor,
                          fmt::format("split rows of dtype {}: neither f32 (0) nor f16 (1)",
                                      split_dtype));
      auto& cache = st.caches[session];
      if (!cache)
        cache = std::make_unique<kv_cache>(m.make_cache(0, st.split));
      try {
        c10::InferenceMode guard;
        auto x = m.embed(tokens);
        std::vector<float> exit_rows;
        // One layer at a time, so that a stopped step ends before its next
        // layer. Layers cached but never finished by a stopped step are
        // overwritten by the rollback's next step, which begins at or
        // before this one's position.
        const int layers_run = m.forward_to_exits_while(
          x, pos, 0, st.split, *cache, st.exits,
          [&](size_t, const at::Tensor& h) { append_last_row(h, exit_rows); },
          [&] { return !st.stops || !st.stops->stopped(session, ticket); });
        const bool stopped = layers_run < st.split;
        const int32_t d = m.config().n_embd;
        edge_output out;
        if (!stopped) {
          // The split rows in the dtype they travel in: the one buffer they
          // take to the cloud (docs/design.md §2).
          out.split = encode_tensor(x, wire_dtype(split_dtype));
          if (!st.exits.empty())
            out.exit_states = make_blob(exit_rows.data(), int32_t(st.exits.size()), d,
                                        wire_dtype::f32);
        }
        out.compute_us = us_since(t0);
        if (auto* p = st.clock.profile()) {
          const int n_layer = m.config().n_layer;
          const auto rows = int64_t(tokens.size());
          // A layer of this model stands for target_layers / n_layer of the
          // target's, each of which runs to its end once begun.
          const int pieces = std::max(1, int(std::lround(double(layers_run) * p->target_layers
                                                         / std::max(n_layer, 1))));
          const int64_t cost_us = p->layers_us(p->edge, layers_run, rows, n_layer);
          auto rp = self->make_response_promise<edge_output>();
          st.clock.hold_in_pieces(self, session, t0, cost_us, pieces,
                                  [rp, cost_us, out = std::move(out)](int64_t took_us) mutable {
                                    if (took_us < cost_us)  // stopped (clock.stop)
                                      out = edge_output{};
                                    out.compute_us = took_us;
                                    rp.deliver(std::move(out));
                                  });
          return rp;
        }
        return out;
      } catch (const model_error& e) {
        return make_error(ceco_errc::compute_failed, e.what());
      }
    },
    [=](cancel_atom, uint64_t session) { self->state.clock.stop(self, session); },
    [=](close_atom, uint64_t session) {
      self->state.caches.erase(session);
      self->state.clock.forget(session);
      if (self->state.stops)
        self->state.stops->forget(session);
    },
    [=](deliver_atom, uint64_t id) { self->state.clock.release(id); },
  };
}

} // namespace

edge_layers_actor spawn_edge_layers(caf::actor_system& sys,
                                    std::shared_ptr<const transformer> model, int split,
                                    std::vector<int> exits,
                                    std::shared_ptr<const compute_profile> profile,
                                    std::shared_ptr<edge_step_stops> stops) {
  return sys.spawn(edge_layers_fn, std::move(model), split, std::move(exits), std::move(profile),
                   std::move(stops));
}

uint64_t edge_step_stops::ticket(uint64_t session) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = stops_.find(session);
  return it == stops_.end() ? 0 : it->second;
}

void edge_step_stops::stop(uint64_t session) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++stops_[session];
}

bool edge_step_stops::stopped(uint64_t session, uint64_t ticket) const {
  return this->ticket(session) != ticket;
}

void edge_step_stops::forget(uint64_t session) {
  std::lock_guard<std::mutex> lock(mutex_);
  stops_.erase(session);
}

} // namespace ceco
