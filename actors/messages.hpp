#pragma once

// Every atom, message type and actor interface of ceco, in one place.
//
// Protocol between an edge and the cloud (all through a `cloud_api` handle:
// in the simulation a link actor that delays and counts in front of the cloud
// front; in a deployment the same link in front of a remote front actor that
// carries each message as a frame of net/frame.hpp to the cloud's gateway):
//
// | message                      | from → to               | reply                  |
// |------------------------------|-------------------------|------------------------|
// | (open_atom)                  | edge → context manager  | session id (uint64)    |
// | upload_msg                   | uploader → context mgr  | int32: positions held  |
// | infer_request                | edge → context manager  | infer_reply (token id) |
// | naive_request                | edge → context manager → cloud layers | infer_reply |
// | generate_request             | edge → context manager → cloud layers | generate_reply |
// | (close_atom, session)        | edge → context manager  | session_summary        |
// | hello_msg                    | edge → cloud front      | hello_msg (the cloud's)|
// | (evaluate_atom, session, exit states) | edge → exit evaluator placed on the cloud | exit_decision |
// | (upload_atom, session, start, states) | edge → uploader placed on the cloud | int32 |
// | draft_upload                 | uploader → context mgr  | verdict, once computed |
//
// A deployment starts with hello: protocol version, model fingerprint,
// split, exits, where the movable actors run (and, for those on the cloud,
// the settings they use) and the shared secret (in a deployment the secret
// never travels: the wire handshake proves it first); the cloud refuses a
// mismatch with an error that says what differs.
//
// Uploads and inference requests are separate messages with no ordering
// between them: a request that arrives before the uploads it needs waits at
// the context manager until they are in and caught up. Positions are always
// explicit (upload_msg::start); a re-sent position is ignored, a gap is
// refused with an error and never computed over.
//
// Speculative and exact responses upload draft_uploads instead: each row
// carries the token the edge chose after that position when the cloud is to
// verify it, and the session's epoch (its rollbacks so far). The reply comes
// once the cloud layers computed those rows: accepted, corrected (the first
// row whose draft the full model disagrees with, and its token: the cloud
// session is cut back to that row and its epoch goes up), or stale (sent
// before a rollback; dropped, never computed over).
//
// Tensors cross sites as tensor_blob bytes (never vectors of floats: CAF
// serialises byte vectors with one memcpy).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <caf/detail/serialized_size.hpp>

namespace ceco {

// -- atoms (at most 10 characters) -------------------------------------------

using open_atom = caf::atom_constant<caf::atom("open")>;
using close_atom = caf::atom_constant<caf::atom("close")>;
using forward_atom = caf::atom_constant<caf::atom("forward")>;
using evaluate_atom = caf::atom_constant<caf::atom("evaluate")>;
using upload_atom = caf::atom_constant<caf::atom("upload")>;
using run_atom = caf::atom_constant<caf::atom("run")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using sweep_atom = caf::atom_constant<caf::atom("sweep")>;
using deliver_atom = caf::atom_constant<caf::atom("deliver")>;
using reconnect_atom = caf::atom_constant<caf::atom("reconnect")>;
using status_atom = caf::atom_constant<caf::atom("status")>;
using get_atom = caf::atom_constant<caf::atom("get")>;
using token_atom = caf::atom_constant<caf::atom("token")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using generate_atom = caf::atom_constant<caf::atom("generate")>;

// -- errors -------------------------------------------------------------------

/// Errors ceco actors answer with; the message context carries the details.
enum class ceco_errc : uint8_t {
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
};

/// Version of the edge-cloud protocol; a hello with another is refused.
constexpr uint32_t protocol_version = 3;

caf::error make_error(ceco_errc code, std::string what);
/// Whether `err` is the ceco error `code`.
bool is(const caf::error& err, ceco_errc code);
/// "unknown_session: session 7 is not open" for ceco errors, CAF's text else.
std::string describe(const caf::error& err);
const char* to_string(ceco_errc code);

// -- wire types ---------------------------------------------------------------

enum class wire_dtype : uint8_t { f32 = 0, f16 = 1 };

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

/// Split-layer hidden states of positions [start, start + states.rows).
struct upload_msg {
  uint64_t session = 0;
  int32_t start = 0;
  tensor_blob states;
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

/// Cloud strategy: the prompt's token ids; the cloud generates everything.
struct generate_request {
  uint64_t session = 0;
  std::vector<int32_t> prompt;
  int32_t max_tokens = 0;
};

struct generate_reply {
  std::vector<int32_t> tokens;
  int64_t cloud_us = 0;
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
  std::string secret;         // must match the cloud's cloud.secret
  bool evaluator_on_cloud = false;  // placement.exit_evaluator = "cloud"
  bool uploader_on_cloud = false;   // placement.uploader = "cloud"
  float threshold = 0;              // compared when the evaluator is on the cloud
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

struct session_summary {
  uint64_t session = 0;
  int32_t positions = 0;     // uploaded positions the cloud layers computed
  int64_t compute_us = 0;    // cloud compute spent on this session
  int64_t gaps = 0;          // uploads refused for skipping positions
};

// -- edge-local payloads (serialisable, so any actor may live on any node) ---

/// Edge layers' output for a run of positions.
struct edge_output {
  tensor_blob split;        // [T, n_embd] hidden states after the split layer
  tensor_blob exit_states;  // [n_exits, n_embd] last row after each exit layer
  int64_t compute_us = 0;
};

/// What the exit heads decided about one position.
struct exit_decision {
  int32_t exit_layer = -1;          // first exit that fires; -1 if none
  int32_t token = 0;                // that exit's token, else the deepest exit's
  std::vector<float> confidence;    // per exit
  int64_t compute_us = 0;
};

/// Per-session traffic as seen by a link, in serialised bytes.
struct link_counters {
  int64_t bytes_up = 0;
  int64_t bytes_down = 0;
  int64_t messages_up = 0;
  int64_t messages_down = 0;
};

/// The figures of one response; see README "Metrics".
struct response_report {
  std::string mode;
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;
  std::vector<int32_t> exit_layers;    // the configured exits
  std::vector<int32_t> exit_counts;    // tokens emitted per exit
  int32_t cloud_tokens = 0;            // tokens the cloud produced
  int32_t degraded_tokens = 0;         // emitted on the edge because the cloud was lost
  int32_t resumed = 0;                 // times it moved to a new cloud session after a loss
  int32_t cloud_requests = 0;
  int32_t uploads = 0;                 // upload messages sent
  int32_t uploaded_positions = 0;
  link_counters traffic;
  int64_t edge_us = 0;
  int64_t cloud_us = 0;
  int64_t comm_us = 0;
  int64_t total_us = 0;
  // Streaming: when each token became final (the user sees it), from the start.
  int64_t first_token_us = -1;         // time to first token; -1 = none
  int64_t itl_p50_us = 0;              // inter-token latency, median
  int64_t itl_p95_us = 0;
  // Speculative and exact (design notes §8):
  int32_t drafts = 0;                  // tokens sent to the cloud to verify
  int32_t accepted_drafts = 0;         // of those, the full model agreed
  int32_t rollbacks = 0;               // corrections received
  int32_t discarded_tokens = 0;        // edge tokens computed and thrown away by rollbacks
  int32_t unverified_tokens = 0;       // exact: final tokens the cloud never verified (lost)
  int32_t verdicts = 0;                // verdict messages received
  int64_t verify_bytes = 0;            // draft ids and epochs up, verdicts down
  std::string error;                   // empty on success
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_blob& x) {
  return f(caf::meta::type_name("tensor_blob"), x.dtype, x.rows, x.cols, x.bytes);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, upload_msg& x) {
  return f(caf::meta::type_name("upload_msg"), x.session, x.start, x.states);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, infer_request& x) {
  return f(caf::meta::type_name("infer_request"), x.session, x.pos);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, infer_reply& x) {
  return f(caf::meta::type_name("infer_reply"), x.token, x.cloud_us);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, draft_upload& x) {
  return f(caf::meta::type_name("draft_upload"), x.session, x.epoch, x.start, x.states, x.drafts);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, verdict& x) {
  return f(caf::meta::type_name("verdict"), x.outcome, x.epoch, x.position, x.token, x.cloud_us);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, naive_request& x) {
  return f(caf::meta::type_name("naive_request"), x.session, x.states);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_request& x) {
  return f(caf::meta::type_name("generate_request"), x.session, x.prompt, x.max_tokens);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_reply& x) {
  return f(caf::meta::type_name("generate_reply"), x.tokens, x.cloud_us);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, hello_msg& x) {
  return f(caf::meta::type_name("hello_msg"), x.protocol, x.fingerprint, x.shape_fingerprint,
           x.weight_types, x.allow_mixed_quantization, x.n_layer, x.split,
           x.exits, x.secret, x.evaluator_on_cloud, x.uploader_on_cloud, x.threshold,
           x.min_exit_layer, x.upload_dtype);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, session_summary& x) {
  return f(caf::meta::type_name("session_summary"), x.session, x.positions, x.compute_us,
           x.gaps);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, edge_output& x) {
  return f(caf::meta::type_name("edge_output"), x.split, x.exit_states, x.compute_us);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, exit_decision& x) {
  return f(caf::meta::type_name("exit_decision"), x.exit_layer, x.token, x.confidence,
           x.compute_us);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, link_counters& x) {
  return f(caf::meta::type_name("link_counters"), x.bytes_up, x.bytes_down, x.messages_up,
           x.messages_down);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, response_report& x) {
  return f(caf::meta::type_name("response_report"), x.mode, x.prompt, x.tokens, x.exit_layers,
           x.exit_counts, x.cloud_tokens, x.degraded_tokens, x.resumed, x.cloud_requests, x.uploads,
           x.uploaded_positions, x.traffic, x.edge_us, x.cloud_us, x.comm_us, x.total_us,
           x.first_token_us, x.itl_p50_us, x.itl_p95_us, x.drafts, x.accepted_drafts, x.rollbacks,
           x.discarded_tokens, x.unverified_tokens, x.verdicts, x.verify_bytes, x.error);
}

/// Bytes of `x` as CAF's binary serialiser writes it: what a link counts.
/// Measured without writing them (no buffer, no copy of the payload).
template <class T>
int64_t wire_size(const T& x) {
  caf::detail::serialized_size_inspector size{static_cast<caf::execution_unit*>(nullptr)};
  auto err = size(const_cast<T&>(x));
  return err ? -1 : int64_t(size.result());
}

// -- cloud-local types (never cross a node: the context manager and the
//    cloud layers always run in one process) --------------------------------

/// Per-session state of the cloud layers: their KV cache and the final
/// hidden states of computed positions. Defined in cloud_layers.cpp.
struct cloud_context;
using cloud_context_ptr = std::shared_ptr<cloud_context>;

/// One session's share of a cloud step: run its uploaded positions
/// [start, start + states.rows) through the cloud layers (rows may be 0),
/// then answer the token after each position in `tokens_after`.
struct cloud_work {
  cloud_context_ptr ctx;
  int32_t start = 0;
  tensor_blob states;
  std::vector<int32_t> tokens_after;
};

struct cloud_work_done {
  std::vector<int32_t> tokens;  // one per tokens_after
  caf::error error;             // when set, none of the work was done
};

/// The work of every session the context manager had ready, computed
/// together: one matrix product per weight over all their rows.
struct cloud_step {
  std::vector<cloud_work> work;
};

struct cloud_step_done {
  std::vector<cloud_work_done> done;  // one per work, in order
  int64_t compute_us = 0;
};

// -- actor interfaces ---------------------------------------------------------

/// What an edge sees of the cloud; see the protocol table above.
using cloud_api = caf::typed_actor<
  caf::replies_to<hello_msg>::with<hello_msg>,
  caf::replies_to<open_atom>::with<uint64_t>,
  caf::replies_to<upload_msg>::with<int32_t>,
  caf::replies_to<draft_upload>::with<verdict>,
  caf::replies_to<infer_request>::with<infer_reply>,
  caf::replies_to<naive_request>::with<infer_reply>,
  caf::replies_to<generate_request>::with<generate_reply>,
  caf::replies_to<close_atom, uint64_t>::with<session_summary>,
  caf::replies_to<evaluate_atom, uint64_t, tensor_blob>::with<exit_decision>,
  caf::replies_to<upload_atom, uint64_t, int32_t, tensor_blob>::with<int32_t>>;

/// A simulated network link that forwards cloud_api to the cloud after the
/// delays of its latency and bandwidth, counting serialised bytes per session.
/// (deliver_atom, id) is its own timer message; (reconnect_atom, front)
/// comes from its reconnector with a new cloud front; (status_atom) answers
/// the link's epoch (how many times it reconnected), or -1 while the cloud
/// is lost.
using link_actor = cloud_api::extend<
  caf::replies_to<stats_atom, uint64_t>::with<link_counters>,
  caf::reacts_to<deliver_atom, uint64_t>,
  caf::reacts_to<reconnect_atom, caf::actor>,
  caf::replies_to<status_atom>::with<int64_t>>;

/// What the context manager holds and has done.
struct cloud_stats {
  int64_t sessions = 0;          // open now
  int64_t context_bytes = 0;     // their KV caches and final states
  int64_t steps = 0;             // cloud steps computed so far
  int64_t stepped_sessions = 0;  // sessions over all steps (/ steps = mean batch)
  int64_t session_bytes = 0;     // context of the last session opened
  int64_t tokens = 0;            // token requests answered so far
  int64_t positions = 0;         // uploaded positions caught up so far
  int64_t refused_limit = 0;     // opens refused: session.max_sessions reached
  int64_t refused_memory = 0;    // opens refused: session.max_memory_mb reached
  int64_t expired = 0;           // sessions freed by the TTL, not closed by their edge
  /// Steps by the sessions they stepped: [i] counts steps of (2^(i-1), 2^i]
  /// sessions (the last, any more); see step_size_bucket.
  std::vector<int64_t> step_sizes;
};

/// Buckets of cloud_stats::step_sizes: 1, 2, 4, ..., 1024 sessions, and more.
constexpr int step_size_buckets = 12;
inline int step_size_bucket(int64_t sessions) {
  int i = 0;
  while (i < step_size_buckets - 1 && (int64_t(1) << i) < sessions)
    ++i;
  return i;
}

/// Sessions, uploads and their eager catch-up, requests waiting for uploads.
/// (stats_atom) -> cloud_stats; (sweep_atom, n) expires idle sessions: its
/// own timer, numbered, so a sweep message from anywhere else changes nothing.
/// (get_atom, session) -> the session's cloud context, for tests and
/// diagnostics in the cloud's process (the front never forwards it).
/// naive_request, generate_request: for an open session, which they keep
/// alive until answered; the cloud layers compute them. (evaluate_atom,
/// session, states): refreshes the session, then asks the exit evaluator
/// placed on the cloud.
using context_manager_actor = caf::typed_actor<
  caf::replies_to<open_atom>::with<uint64_t>,
  caf::replies_to<upload_msg>::with<int32_t>,
  caf::replies_to<draft_upload>::with<verdict>,
  caf::replies_to<get_atom, uint64_t>::with<cloud_context_ptr>,
  caf::replies_to<infer_request>::with<infer_reply>,
  caf::replies_to<naive_request>::with<infer_reply>,
  caf::replies_to<generate_request>::with<generate_reply>,
  caf::replies_to<evaluate_atom, uint64_t, tensor_blob>::with<exit_decision>,
  caf::replies_to<close_atom, uint64_t>::with<session_summary>,
  caf::replies_to<stats_atom>::with<cloud_stats>,
  caf::reacts_to<sweep_atom, uint64_t>>;

/// Layers [split, L) and the final head, plus the whole model for the cloud
/// strategy. A cloud_step catches up several sessions on their uploads and
/// answers their tokens in one pass. The cloud strategy's generate requests
/// are batched the same way: every generation in progress takes one step
/// together, (generate_atom) to itself, and a new one joins at the next step.
/// (deliver_atom, id) is its own timer in profile mode (actors/profile_clock.hpp).
using cloud_layers_actor = caf::typed_actor<
  caf::replies_to<open_atom>::with<cloud_context_ptr>,
  caf::replies_to<cloud_step>::with<cloud_step_done>,
  caf::replies_to<naive_request>::with<infer_reply>,
  caf::replies_to<generate_request>::with<generate_reply>,
  caf::reacts_to<generate_atom>,
  caf::reacts_to<deliver_atom, uint64_t>>;

/// Layers [0, split) on the edge with one KV cache per session. Replies with
/// the split-layer states of every position and the exit layers' states of
/// the last one.
/// (deliver_atom, id): its own timer in profile mode.
using edge_layers_actor = caf::typed_actor<
  caf::replies_to<forward_atom, uint64_t, int32_t, std::vector<int32_t>>::with<edge_output>,
  caf::reacts_to<close_atom, uint64_t>,
  caf::reacts_to<deliver_atom, uint64_t>>;

/// Exit heads and the threshold decision for one position; (deliver_atom,
/// id): its own timer in profile mode.
using exit_evaluator_actor = caf::typed_actor<
  caf::replies_to<evaluate_atom, uint64_t, tensor_blob>::with<exit_decision>,
  caf::reacts_to<deliver_atom, uint64_t>>;

/// Where uploads go: the context manager, or a cloud front / link to it.
using upload_sink = caf::typed_actor<caf::replies_to<upload_msg>::with<int32_t>,
                                     caf::replies_to<draft_upload>::with<verdict>>;

/// Sends split-layer states to the cloud in the configured dtype; replies
/// once the cloud acknowledged them (a caller that does not wait is never
/// held up); a draft_upload (f32 states) likewise, answered by its verdict.
using uploader_actor = caf::typed_actor<
  caf::replies_to<upload_atom, uint64_t, int32_t, tensor_blob>::with<int32_t>,
  caf::replies_to<draft_upload>::with<verdict>>;

/// One response: runs the token loop of its strategy and reports.
/// (cancel_atom) ends it early: the token loop stops, its cloud session is
/// closed and the report (tokens so far, error "cancelled") is delivered.
using edge_session_actor = caf::typed_actor<caf::replies_to<run_atom>::with<response_report>,
                                            caf::reacts_to<cancel_atom>>;

/// Registers every message type above with a CAF configuration.
void register_message_types(caf::actor_system_config& cfg);

} // namespace ceco

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_context_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_step)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_step_done)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_stats)
