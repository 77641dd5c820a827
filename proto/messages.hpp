#pragma once

// ceco's edge-cloud protocol as plain data: every message, its fields in
// wire order with their bounds, the error codes and the protocol versions.
// Below both net/ (which frames these messages, actors/ never seen) and
// actors/ (which sends them between actors and derives CAF's inspect from
// the same fields). No CAF here, and no torch: a codec or a test can use
// this header alone.
//
// Each message lists its fields once, in `fields(F&, T&)` below, with the
// bounds a receiver checks (see docs/design.md "The wire"). A visitor F
// provides one function per kind of field:
//
//   u64, u32, u8(lo, hi), i32(lo, hi), i64(lo, hi), f32(lo, hi), boolean,
//   bytes (a fixed array), vec(count lo, hi, element lo, hi), text(max),
//   blob(rows lo, hi, cols)
//
// and `lim` (the receiving node's model: width, context, vocab, layers,
// max_text) and `largest` (true while adding up the largest legal payload).
//
// A new message: its struct and fields() here, its line in actors/protocol.hpp
// (the list that drives the link, both fronts, the gateway and the frames),
// and its handler.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace ceco {

// -- versions -----------------------------------------------------------------

/// Version of the edge-cloud protocol; a hello with another is refused.
/// 4: sampling on generate and evaluate. 5: generate streams (from,
/// session, done); open_session carries the session's sampling. 6:
/// open_session carries prompt tokens whose split rows the cloud computes;
/// draft uploads and exit decisions carry draft distributions.
constexpr uint32_t protocol_version = 6;

// -- errors ---------------------------------------------------------------------

/// Every error ceco sends or reports, in one code space. Values are fixed
/// by the protocol (an error frame carries the number): add new codes at the
/// end of their group and to is_link_error.
enum class ceco_errc : uint8_t {
  // Answers of ceco's actors (the message context carries the details).
  unknown_session = 1,  // no such session (never opened, closed, or expired)
  bad_tensor,           // dtype, shape and byte count disagree, or wrong width
  position_gap,         // an upload skips positions the cloud has not seen
  bad_position,         // a request for a position outside the sequence
  compute_failed,       // the model refused the input
  session_limit,        // too many sessions
  handshake_failed,     // protocol, model, split or secret differ
  cloud_unreachable,    // the link to the cloud is down
  not_placed_here,      // the actor asked for runs on the other node
  unknown_message,      // not a message of the protocol
  handshake_timeout,    // the cloud did not complete the handshake in time (retried)
  bad_request,          // a request this edge cannot encode: refused here, nothing sent
  session_lost,         // the cloud node that held the session is gone: open a new one
  // The link's own: a frame refused or a connection failed.
  bad_header = 100,   // magic, version or type unknown
  too_large,          // payload size over the type's or the frame cap
  bad_field,          // a field outside its range
  truncated,          // the payload ends inside a field
  trailing_bytes,     // bytes left after the last field
  not_allowed,        // a frame the connection's state does not accept
  too_many_requests,  // the connection's queue is full
  closed,             // the connection closed
  timed_out,          // a deadline passed
  auth_failed,        // the peer did not prove the shared secret
  io,                 // socket error
  not_encodable,      // a message this side cannot encode (outside the bounds): not sent
};

/// "unknown_session", ...; "unknown_error" for a number that is no code.
const char* to_string(ceco_errc code);
/// Whether `code` is one of ceco_errc's values.
bool is_known(uint8_t code);
/// Whether `code` is the link's own (a frame or a connection failed), as
/// opposed to an answer of the actors.
bool is_link_error(ceco_errc code);

// -- tensors --------------------------------------------------------------------

enum class wire_dtype : uint8_t { f32 = 0, f16 = 1 };

/// Bytes per element of a wire dtype (f16: 2, else 4).
inline size_t element_size(uint8_t dtype) { return dtype == uint8_t(wire_dtype::f16) ? 2 : 4; }

/// A row-major [rows, cols] matrix as bytes.
struct tensor_blob {
  uint8_t dtype = uint8_t(wire_dtype::f32);
  int32_t rows = 0;
  int32_t cols = 0;
  std::vector<uint8_t> bytes;

  /// Empty when consistent, else what is wrong (dtype, sizes).
  std::string check(int32_t expected_cols) const;
  friend bool operator==(const tensor_blob& a, const tensor_blob& b) {
    return a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols && a.bytes == b.bytes;
  }
};

/// fp32 rows -> blob of `dtype` (f16 rounds to nearest even).
tensor_blob make_blob(const float* data, int32_t rows, int32_t cols, wire_dtype dtype);
/// blob -> fp32 rows into out[rows * cols]; the blob must pass check().
void read_blob(const tensor_blob& b, float* out);

// -- the edge's requests and the cloud's replies --------------------------------

/// How a token is chosen where it is decided (docs/design.md §5): greedy
/// (argmax) when temperature is 0, else a sample of softmax(logits /
/// temperature) cut to the top_k (0: all) and then to top_p, drawn with a
/// uniform that depends on the seed and the position alone.
struct sampling_params {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
};

/// The first message of a deployment, both ways.
struct hello_msg {
  uint32_t protocol = protocol_version;
  uint64_t fingerprint = 0;   // of the model's shape and weights
  uint64_t shape_fingerprint = 0;  // of the shape and tokenizer alone (see model/loader.hpp)
  std::string weight_types;   // the weights' types, "Q4_K+Q6_K"
  bool allow_mixed_quantization = false;  // the cloud's cloud.allow_mixed_quantization
  int32_t n_layer = 0;
  int32_t split = 0;
  std::vector<int32_t> exits;
  /// Must match the cloud's cloud.secret. Compared in one process; never a
  /// field on the wire or in a serialised message (the wire handshake
  /// proves it instead).
  std::string secret;
  bool evaluator_on_cloud = false;  // placement.exit_evaluator = "cloud"
  bool uploader_on_cloud = false;   // placement.uploader = "cloud"
  float threshold = 0;              // compared when the evaluator is on the cloud;
                                    // threshold_auto: policy.threshold = "auto"
  /// policy.threshold unset (each exit's calibrated θ): above any settable θ.
  static constexpr float threshold_auto = 1e6f;
  int32_t min_exit_layer = 0;       // likewise
  uint8_t upload_dtype = 0;         // compared when the uploader is on the cloud
};

/// What differs between two hellos ("" when they agree); secrets are
/// compared but never printed. One model in two quantizations (same shape
/// fingerprint, different weight types) agrees only when the cloud allows
/// it (cloud.allow_mixed_quantization).
std::string compare_hello(const hello_msg& edge, const hello_msg& cloud);
/// The line a node logs when it accepts another quantization of its model
/// ("" when both hold the same weights).
std::string mixed_quantization_note(const hello_msg& edge, const hello_msg& cloud);

/// Opens a session on the cloud; answered by open_reply (between actors, by
/// the session id alone). `sampling`: how the cloud chooses the session's
/// tokens (infer, naive) and verifies its drafts (docs/design.md §5).
/// `prompt`: the tokens of positions [0, prompt.size()), whose split rows
/// the cloud computes itself over layers [0, split) (upload.prompt =
/// "tokens", docs/design.md §2); the edge's uploads begin after them.
struct open_session {
  sampling_params sampling;
  std::vector<int32_t> prompt;
};
struct open_reply {
  uint64_t session = 0;
};

/// Split-layer hidden states of positions [start, start + states.rows).
struct upload_msg {
  uint64_t session = 0;
  int32_t start = 0;
  tensor_blob states;
};

/// Reply to upload_msg and upload_states: positions the cloud holds.
struct positions_reply {
  int32_t positions = 0;
};

/// The token after position `pos`, computed by the cloud layers from the
/// uploaded states of positions 0..pos.
struct infer_request {
  uint64_t session = 0;
  int32_t pos = 0;
};

struct infer_reply {
  int32_t token = 0;
  int64_t cloud_us = 0;  // time the request spent in the cloud
};

/// The distributions drafts were drawn from (docs/design.md §5), one entry
/// per draft of a message, flattened: entry i has counts[i] candidates (0:
/// none sent, the draft taken as a point mass), whose tokens and weights
/// follow those of entry i - 1; q(y) is y's weight over the entry's total.
/// No counts at all: every entry a point mass.
struct draft_distributions {
  std::vector<int32_t> counts;
  std::vector<int32_t> tokens;
  std::vector<float> weights;

  /// Empty when consistent for `entries` entries and a vocabulary of
  /// `vocab`, else what is wrong.
  std::string check(size_t entries, int32_t vocab) const;
  /// Appends entry `i` of `from` (a consistent one) as this one's next.
  void append(const draft_distributions& from, size_t i);
  /// Appends a point-mass entry.
  void append_none();
  void clear() {
    counts.clear();
    tokens.clear();
    weights.clear();
  }
};

/// Split-layer states of positions [start, start + states.rows) of a
/// speculative or exact response, with what the cloud is to verify:
/// drafts[i] is the token the edge chose after position start + i, or -1
/// when that token is not the cloud's to check (a prompt position, or a
/// confident exit in speculative mode).
struct draft_upload {
  uint64_t session = 0;
  int32_t epoch = 0;  // the session's rollbacks the edge knew of when it sent this
  int32_t start = 0;
  tensor_blob states;
  std::vector<int32_t> drafts;  // one per row
  draft_distributions q;        // one entry per row (a row without a draft: none)
};

enum class verdict_outcome : uint8_t {
  accepted = 0,   // every draft of the upload equals the full model's token
  corrected = 1,  // the draft after `position` differs: the cloud's is `token`
  stale = 2,      // sent before a rollback the edge had not heard of: dropped
};

/// The cloud's answer to a draft_upload, once its rows are computed.
struct verdict {
  uint8_t outcome = uint8_t(verdict_outcome::accepted);
  int32_t epoch = 0;      // the session's epoch after this verdict
  int32_t position = -1;  // corrected: the row whose draft was wrong
  int32_t token = 0;      // corrected: the full model's token after it
  int64_t cloud_us = 0;   // from arrival to verdict

  verdict_outcome what() const { return verdict_outcome(outcome); }
};

/// Naive split: the whole sequence's split-layer states, fp32, every step;
/// the cloud recomputes its layers over all of them.
struct naive_request {
  uint64_t session = 0;
  tensor_blob states;
};

/// Cloud strategy, streamed (docs/design.md §1, §2): the first request
/// carries the prompt and starts the generation; `session` 0 asks the cloud
/// to open a session for it (no open round trip; the reply names it). Every
/// later request of the session is a long poll, prompt empty: answered as
/// soon as the generation holds more than `from` tokens (or is done), with
/// every token since `from`.
struct generate_request {
  uint64_t session = 0;
  std::vector<int32_t> prompt;  // empty for a poll
  int32_t max_tokens = 0;
  int32_t from = 0;             // tokens the edge already has
  sampling_params sampling;  // the cloud samples each token (greedy by default)
};

struct generate_reply {
  std::vector<int32_t> tokens;  // tokens [from, from + size) of the generation
  int64_t cloud_us = 0;         // cloud compute since the previous reply
  uint64_t session = 0;         // the generation's session (opened for it when asked with 0)
  uint8_t done = 0;             // 1: no token follows
};

/// Ends a session; answered by its session_summary (the edge layers' own
/// close of a session is (close_atom, session) of actors/messages.hpp).
struct close_session {
  uint64_t session = 0;
};

struct session_summary {
  uint64_t session = 0;
  int32_t positions = 0;     // uploaded positions the cloud layers computed
  int64_t compute_us = 0;    // cloud compute spent on this session
  int64_t gaps = 0;          // uploads refused for skipping positions
};

/// The exit states of one position for an exit evaluator placed on the
/// cloud; answered by exit_decision.
struct evaluate_request {
  uint64_t session = 0;
  tensor_blob exit_states;  // [n_exits, n_embd]
  int32_t pos = 0;          // the position the states are of: the token after it is decided
  sampling_params sampling; // how the exit's token is chosen (greedy by default)
};

/// What the exit heads decided about one position.
struct exit_decision {
  int32_t exit_layer = -1;          // first exit that fires; -1 if none
  int32_t token = 0;                // that exit's token, else the deepest exit's
  std::vector<float> confidence;    // per exit
  int64_t compute_us = 0;
  // The token to draft when the cloud verifies it (speculative, exact): when
  // sampling with policy.draft_candidates, drawn from that exit's
  // distribution cut to them, which q_tokens and q_weights give; else
  // `token`, and no candidates.
  int32_t draft = 0;
  std::vector<int32_t> q_tokens;
  std::vector<float> q_weights;
};

/// An upload_msg of split-layer states (f32) for an uploader, on the edge or
/// placed on the cloud, which converts them to upload.dtype and hands them to
/// the context manager; answered by positions_reply (between actors, by the
/// positions alone). Its own frame type, the same fields.
struct upload_states : upload_msg {};

// -- the link's own messages ------------------------------------------------------

constexpr size_t nonce_size = 32;
constexpr size_t mac_size = 32;  // HMAC-SHA256
using nonce = std::array<uint8_t, nonce_size>;
using mac = std::array<uint8_t, mac_size>;

/// Server -> client, first frame of a connection.
struct auth_challenge {
  nonce server_nonce{};
};
/// Client -> server: its nonce and HMAC(secret, "ceco client" | server | client nonce).
struct auth_response {
  nonce client_nonce{};
  mac client_mac{};
};
/// Server -> client: HMAC(secret, "ceco server" | server | client nonce).
struct auth_ok {
  mac server_mac{};
};
/// The cloud's hello, the reply to the edge's hello_msg.
struct hello_reply {
  hello_msg hello;
};
struct ping {
  uint64_t stamp = 0;
};
struct pong {
  uint64_t stamp = 0;
};
/// Any request may be answered by an error: a ceco_errc and what happened.
struct error_frame {
  uint8_t code = 0;
  std::string text;
};

// -- fields, in wire order, with their bounds -------------------------------------

namespace proto {
constexpr int64_t max_us = 86'400'000'000;  // durations in a reply: one day
constexpr int64_t max_count = 1'000'000'000;
constexpr int64_t max_candidates = 64;  // a draft distribution's (model/sampler.hpp)

template <class T, class = void>
struct has_session : std::false_type {};
template <class T>
struct has_session<T, std::void_t<decltype(std::declval<const T&>().session)>> : std::true_type {};

/// Whether a message names a session (a `session` field).
template <class T>
constexpr bool names_session = has_session<T>::value;

/// The session a message names; 0 for one that names none (hello, open).
template <class T>
uint64_t session_of(const T& x) {
  if constexpr (names_session<T>)
    return x.session;
  else
    return 0;
}
} // namespace proto

/// A sampling_params' fields, inside the message that carries it.
template <class F> void sampling_fields(F& f, sampling_params& x) {
  f.f32("temperature", x.temperature, 0.0, 100.0);
  f.i32("top_k", x.top_k, 0, f.lim.vocab);
  f.f32("top_p", x.top_p, 0.0, 1.0);
  f.u64("seed", x.seed);
}

template <class F> void fields(F& f, auth_challenge& x) { f.bytes("server_nonce", x.server_nonce); }
template <class F> void fields(F& f, auth_response& x) {
  f.bytes("client_nonce", x.client_nonce);
  f.bytes("client_mac", x.client_mac);
}
template <class F> void fields(F& f, auth_ok& x) { f.bytes("server_mac", x.server_mac); }
template <class F> void fields(F& f, hello_msg& x) {
  const auto& L = f.lim;
  f.u32("protocol", x.protocol);
  f.u64("fingerprint", x.fingerprint);
  f.i32("n_layer", x.n_layer, 1, L.layers);
  f.i32("split", x.split, 1, std::max(x.n_layer - 1, 1));
  f.vec("exits", x.exits, 0, L.layers, 1, L.layers);
  f.boolean("evaluator_on_cloud", x.evaluator_on_cloud);
  f.boolean("uploader_on_cloud", x.uploader_on_cloud);
  f.f32("threshold", x.threshold, 0.0, 1e6);
  f.i32("min_exit_layer", x.min_exit_layer, 0, L.layers);
  f.u8("upload_dtype", x.upload_dtype, 0, 1);
  f.u64("shape_fingerprint", x.shape_fingerprint);
  f.text("weight_types", x.weight_types, 256);
  f.boolean("allow_mixed_quantization", x.allow_mixed_quantization);
}
template <class F> void fields(F& f, hello_reply& x) { fields(f, x.hello); }
template <class F> void fields(F& f, open_session& x) {
  sampling_fields(f, x.sampling);
  f.vec("prompt", x.prompt, 0, f.lim.context - 1, 0, f.lim.vocab - 1);
}
template <class F> void fields(F& f, open_reply& x) { f.u64("session", x.session); }
template <class F> void fields(F& f, upload_msg& x) {
  f.u64("session", x.session);
  f.i32("start", x.start, 0, f.lim.context - 1);
  f.blob("states", x.states, 0, int64_t(f.lim.context) - x.start, f.lim.width);
}
template <class F> void fields(F& f, positions_reply& x) {
  f.i32("positions", x.positions, 0, f.lim.context);
}
template <class F> void fields(F& f, infer_request& x) {
  f.u64("session", x.session);
  f.i32("pos", x.pos, 0, f.lim.context - 1);
}
template <class F> void fields(F& f, infer_reply& x) {
  f.i32("token", x.token, 0, f.lim.vocab - 1);
  f.i64("cloud_us", x.cloud_us, 0, proto::max_us);
}
template <class F> void fields(F& f, naive_request& x) {
  f.u64("session", x.session);
  f.blob("states", x.states, 1, f.lim.context, f.lim.width);
}
template <class F> void fields(F& f, generate_request& x) {
  f.u64("session", x.session);
  f.vec("prompt", x.prompt, 0, f.lim.context, 0, f.lim.vocab - 1);
  f.i32("max_tokens", x.max_tokens, 1, f.lim.context);
  f.i32("from", x.from, 0, f.lim.context);
  sampling_fields(f, x.sampling);
}
template <class F> void fields(F& f, generate_reply& x) {
  f.vec("tokens", x.tokens, 0, f.lim.context, 0, f.lim.vocab - 1);
  f.i64("cloud_us", x.cloud_us, 0, proto::max_us);
  f.u64("session", x.session);
  f.u8("done", x.done, 0, 1);
}
template <class F> void fields(F& f, close_session& x) { f.u64("session", x.session); }
template <class F> void fields(F& f, session_summary& x) {
  f.u64("session", x.session);
  f.i32("positions", x.positions, 0, f.lim.context);
  f.i64("compute_us", x.compute_us, 0, proto::max_us);
  f.i64("gaps", x.gaps, 0, proto::max_count);
}
template <class F> void fields(F& f, evaluate_request& x) {
  f.u64("session", x.session);
  f.blob("exit_states", x.exit_states, 1, f.lim.layers, f.lim.width);
  f.i32("pos", x.pos, 0, f.lim.context - 1);
  sampling_fields(f, x.sampling);
}
template <class F> void fields(F& f, exit_decision& x) {
  f.i32("exit_layer", x.exit_layer, -1, f.lim.layers);
  f.i32("token", x.token, 0, f.lim.vocab - 1);
  f.vec("confidence", x.confidence, 0, f.lim.layers, 0.0, 1.001);  // exit_head::confidence, in [0, 1]
  f.i64("compute_us", x.compute_us, 0, proto::max_us);
  f.i32("draft", x.draft, 0, f.lim.vocab - 1);
  f.vec("q_tokens", x.q_tokens, 0, proto::max_candidates, 0, f.lim.vocab - 1);
  f.vec("q_weights", x.q_weights, 0, proto::max_candidates, 0.0, 1.0);
}
/// A draft_distributions of `entries` entries (0 or `entries` counts).
template <class F> void draft_q_fields(F& f, draft_distributions& x, int64_t entries) {
  const int64_t most = entries * proto::max_candidates;
  f.vec("q_counts", x.counts, 0, entries, 0, proto::max_candidates);
  f.vec("q_tokens", x.tokens, 0, most, 0, f.lim.vocab - 1);
  f.vec("q_weights", x.weights, 0, most, 0.0, 1.0);
}
template <class F> void fields(F& f, draft_upload& x) {
  f.u64("session", x.session);
  f.i32("epoch", x.epoch, 0, f.lim.context);  // each rollback adds a final token
  f.i32("start", x.start, 0, f.lim.context - 1);
  f.blob("states", x.states, 1, int64_t(f.lim.context) - x.start, f.lim.width);
  // One draft per row: the largest frame has as many as the context.
  const int64_t rows = F::largest ? int64_t(f.lim.context) : int64_t(x.states.rows);
  f.vec("drafts", x.drafts, rows, rows, -1, f.lim.vocab - 1);
  draft_q_fields(f, x.q, rows);
}
template <class F> void fields(F& f, verdict& x) {
  f.u8("outcome", x.outcome, 0, 2);
  f.i32("epoch", x.epoch, 0, f.lim.context);
  f.i32("position", x.position, -1, f.lim.context - 1);
  f.i32("token", x.token, 0, f.lim.vocab - 1);
  f.i64("cloud_us", x.cloud_us, 0, proto::max_us);
}
template <class F> void fields(F& f, ping& x) { f.u64("stamp", x.stamp); }
template <class F> void fields(F& f, pong& x) { f.u64("stamp", x.stamp); }
template <class F> void fields(F& f, error_frame& x) {
  f.u8("code", x.code, 0, 255);
  f.text("text", x.text, f.lim.max_text);
}

} // namespace ceco
