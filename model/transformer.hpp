#pragma once

// The forward pass over any layer range. A node that runs layers [0, k)
// hands its output hidden states to a node that runs [k, L); the result
// equals the unsplit forward. Positions are explicit: forward_layers(x, pos)
// computes positions pos .. pos+T-1 and requires the cache to hold exactly
// the positions before pos (no gaps).

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/compute_threads.hpp"
#include "model/config.hpp"
#include "model/device.hpp"
#include "model/kv_cache.hpp"
#include "model/layer.hpp"
#include "model/weights.hpp"

namespace ceco {

class transformer {
public:
  transformer(model_config cfg, model_weights weights, c10::Device device);

  const model_config& config() const { return cfg_; }
  const model_weights& weights() const { return w_; }
  c10::Device device() const { return device_; }

  /// A cache for layers [first, last); capacity 0 means the model's max_seq.
  /// It holds cache_dtype() values.
  kv_cache make_cache(int first, int last, int capacity = 0) const;

  /// What the caches made from now on hold keys and values in: f32 by
  /// default; f16 halves the bytes that each decoded token's attention
  /// reads, at f16's precision (see model.kv_dtype in config/sim.toml).
  /// Caches made before keep theirs.
  void set_kv_dtype(kv_dtype t) { kv_dtype_ = t; }
  /// set_kv_dtype's, or f16 while reference numerics are on (the
  /// reference implementation's cache is f16).
  kv_dtype cache_dtype() const { return reference_numerics_ ? kv_dtype::f16 : kv_dtype_; }

  /// ids [T] -> hidden states [T, n_embd].
  at::Tensor embed(const std::vector<int32_t>& ids) const;
  /// Writes the embedding of one token into row 0 of x [1, n_embd].
  void embed_into(int32_t id, at::Tensor& x) const;

  /// In place on x [T, n_embd] (contiguous fp32 on this model's device):
  /// runs layers [first, last) at positions pos .. pos+T-1 and appends their
  /// keys and values to `cache`. Throws model_error on a bad range, a gap
  /// or a full cache.
  void forward_layers(at::Tensor& x, int64_t pos, int first, int last, kv_cache& cache) const;

  /// forward_layers over [first, last), stopping after each of `exits`
  /// (strictly ascending, inside (first, last]) to call on_exit(i, x) with
  /// the hidden states after exit i's layer. Generation, exit training and
  /// the edge's layers all run to their exits this way.
  template <class OnExit>
  void forward_to_exits(at::Tensor& x, int64_t pos, int first, int last, kv_cache& cache,
                        const std::vector<int>& exits, OnExit&& on_exit) const {
    check_exits(exits, first, last);
    int done = first;
    for (size_t i = 0; i < exits.size(); ++i) {
      forward_layers(x, pos, done, exits[i], cache);
      done = exits[i];
      on_exit(i, static_cast<const at::Tensor&>(x));
    }
    forward_layers(x, pos, done, last, cache);
  }

  /// forward_to_exits one layer at a time, asking go_on() before each and
  /// stopping there when it answers false (a step the edge no longer
  /// needs); returns the layers run, last - first when never stopped.
  template <class OnExit, class GoOn>
  int forward_to_exits_while(at::Tensor& x, int64_t pos, int first, int last, kv_cache& cache,
                             const std::vector<int>& exits, OnExit&& on_exit,
                             GoOn&& go_on) const {
    check_exits(exits, first, last);
    size_t next_exit = 0;
    for (int il = first; il < last; ++il) {
      if (!go_on())
        return il - first;
      forward_layers(x, pos, il, il + 1, cache);
      if (next_exit < exits.size() && exits[next_exit] == il + 1)
        on_exit(next_exit++, static_cast<const at::Tensor&>(x));
    }
    return last - first;
  }

  /// One step of several independent sequences (one per session) at once.
  struct sequence_step {
    at::Tensor* x;    // [T_i, n_embd], updated in place
    int64_t pos;      // position of its first row
    kv_cache* cache;  // this sequence's own cache
  };
  /// The same as forward_layers on every step in turn (up to float
  /// rounding), but the projections and the feed-forward run as one matrix
  /// product over the rows of all sequences, so the weights are read once
  /// per layer instead of once per sequence. Attention stays per sequence.
  /// Inputs that are consecutive rows of one contiguous tensor, in step
  /// order (the cloud layers decode uploads so), are computed where they
  /// are; others are gathered first and copied back. Checks every step
  /// before computing any.
  void forward_sequences(const std::vector<sequence_step>& steps, int first, int last) const;

  /// Final norm and classifier: h [T, n_embd] -> logits [T, vocab].
  at::Tensor logits(const at::Tensor& h) const;
  /// Same for the last row of h, into out [vocab] (preallocated fp32).
  void logits_into(const at::Tensor& h, at::Tensor& out) const;
  /// Every row of h [N, n_embd] into out [N, vocab] (preallocated fp32); on
  /// CPU the same arithmetic as logits_into, row by row, with the
  /// classifier read once for all rows.
  void logits_rows_into(const at::Tensor& h, at::Tensor& out) const;

  /// The one-token CPU path uses plain loops; turning it off makes every
  /// call take the batched libtorch path (tests compare the two).
  void set_fast_decode(bool on) { fast_decode_ = on; }

  /// Arithmetic as the reference implementation (llama.cpp) does it by
  /// default on CPU: keys and values held in an f16 cache (whatever
  /// set_kv_dtype says; a cache made earlier in f32 is refused), queries rounded
  /// to f16, flash attention's online softmax accumulating the weighted
  /// values in f16, and RoPE angles rounded as it makes them. Off by default
  /// (f32 arithmetic, more accurate); on, every position of a CPU model
  /// takes the one-token path, row by row. With quantized weights the
  /// activations are rounded to 8 bits, so a rounding difference upstream
  /// can move the logits by a whole 8-bit step: this lets ceco reproduce
  /// the reference's logits (tests), it is not a speed or quality choice.
  void set_reference_numerics(bool on);
  bool reference_numerics() const { return reference_numerics_; }

private:
  void check_exits(const std::vector<int>& exits, int first, int last) const;
  void check_forward(const at::Tensor& x, int64_t pos, int first, int last,
                     const kv_cache& cache) const;
  /// The reference layer (model/layer.hpp) over the rows of one or more
  /// sequences stacked in x [sum T_i, n_embd].
  void forward_stacked(at::Tensor& x, const sequence_step* steps, size_t n_steps, int il) const;
  /// The same layer in plain loops for one decode position of each step,
  /// the rows of x [n_steps, n_embd].
  void forward_rows_cpu(float* x, const sequence_step* steps, size_t n_steps, int il) const;
  /// Rotates q [T, d] and k [T, d_kv] of positions pos.., stores k and v in
  /// the cache and returns the attention output [T, n_embd].
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos,
                    int il, kv_cache& cache) const;
  /// The same for one position on CPU into raw rows: q [n_embd] rotated in
  /// place; k and v [n_embd_kv] of position pos, k not yet rotated, are
  /// stored into the cache in its dtype.
  void attend_one_cpu(float* out, float* q, const float* k, const float* v, int64_t pos, int il,
                      kv_cache& cache) const;

  model_config cfg_;
  model_weights w_;
  c10::Device device_;
  rope_table rope_;
  bool fast_decode_ = true;
  bool reference_numerics_ = false;
  kv_dtype kv_dtype_ = kv_dtype::f32;
};

} // namespace ceco
