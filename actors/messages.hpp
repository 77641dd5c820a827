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
// | open_session                 | edge → context manager  | session id (uint64)    |
// | upload_msg                   | uploader → context mgr  | int32: positions held  |
// | infer_request                | edge → context manager  | infer_reply (token id) |
// | naive_request                | edge → context manager → cloud layers | infer_reply |
// | generate_request             | edge → context manager → cloud layers | generate_reply |
// |   (session 0: the cloud front opens a session for it; later ones of the session are long polls) |
// | close_session                | edge → context manager  | session_summary        |
// | hello_msg                    | edge → cloud front      | hello_msg (the cloud's)|
// | evaluate_request             | edge → exit evaluator placed on the cloud | exit_decision |
// | upload_states                | edge → uploader placed on the cloud | int32 |
// | draft_upload                 | uploader → context mgr  | verdict, once computed |
//
// The table is `cloud_protocol` below: one line per request and its reply,
// from which cloud_api and every relay of it (link, remote front, cloud
// front, gateway, wire bridge) are generated.
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
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <caf/all.hpp>
#include <caf/detail/serialized_size.hpp>

#include "config/strategy.hpp"
#include "model/sampler.hpp"
#include "proto/messages.hpp"

namespace ceco {

// -- sampling: the wire's parameters and the model's sampler options -------------

inline sampler_options sampler_of(const sampling_params& p) {
  return {p.temperature, p.top_k, p.top_p, p.seed};
}
inline sampling_params params_of(const sampler_options& o) {
  return {o.temperature, o.top_k, o.top_p, o.seed};
}

// -- atoms (at most 10 characters) -------------------------------------------

using open_atom = caf::atom_constant<caf::atom("open")>;
using close_atom = caf::atom_constant<caf::atom("close")>;
using forward_atom = caf::atom_constant<caf::atom("forward")>;
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
using join_atom = caf::atom_constant<caf::atom("join")>;
using cluster_atom = caf::atom_constant<caf::atom("cluster")>;

// -- errors -------------------------------------------------------------------

/// ceco's errors as CAF errors (category "ceco"); the context carries the details.
caf::error make_error(ceco_errc code, std::string what);
/// Whether `err` is the ceco error `code`.
bool is(const caf::error& err, ceco_errc code);
/// "unknown_session: session 7 is not open" for ceco errors, CAF's text else.
std::string describe(const caf::error& err);

// -- edge-local payloads (serialisable, so any actor may live on any node) ---

/// Edge layers' output for a run of positions; no rows at all when the
/// step was stopped (edge_step_stops).
struct edge_output {
  tensor_blob split;        // [T, n_embd] hidden states after the split layer
  tensor_blob exit_states;  // [n_exits, n_embd] last row after each exit layer
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
  strategy mode = strategy::collaborative;
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
  // Speculative and exact (docs/design.md §5):
  int32_t drafts = 0;                  // tokens sent to the cloud to verify
  int32_t accepted_drafts = 0;         // of those, the full model agreed
  int32_t rollbacks = 0;               // corrections received
  int32_t discarded_tokens = 0;        // edge tokens computed and thrown away by rollbacks
  int32_t unverified_tokens = 0;       // exact: final tokens the cloud never verified (lost)
  int32_t verdicts = 0;                // verdict messages received
  int64_t verify_bytes = 0;            // draft ids and epochs up, verdicts down
  std::string error;                   // empty on success
  std::vector<std::string> phases;     // the session's phases after idle, in order (edge_session.hpp)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_blob& x) {
  return f(caf::meta::type_name("tensor_blob"), x.dtype, x.rows, x.cols, x.bytes);
}

namespace caf_inspect {

/// Hands each field a protocol message lists in fields() (proto/messages.hpp)
/// to a CAF inspector, in the same order; the bounds are the wire's to check.
template <class Inspector>
struct caf_fields {
  using result_type = typename Inspector::result_type;
  static constexpr bool largest = false;
  struct {
    int32_t width = 0, context = 0, vocab = 0, layers = 0;
    uint32_t max_text = 0;
  } lim;
  Inspector& f;
  caf::error err;

  template <class T>
  void put(T& v) {
    if constexpr (std::is_same_v<result_type, void>)
      f(v);
    else if (!err)
      err = f(v);
  }
  void u64(const char*, uint64_t& v) { put(v); }
  void u32(const char*, uint32_t& v) { put(v); }
  void u8(const char*, uint8_t& v, int, int) { put(v); }
  void i32(const char*, int32_t& v, int64_t, int64_t) { put(v); }
  void i64(const char*, int64_t& v, int64_t, int64_t) { put(v); }
  void f32(const char*, float& v, double, double) { put(v); }
  void boolean(const char*, bool& v) { put(v); }
  template <size_t N>
  void bytes(const char*, std::array<uint8_t, N>& a) {
    for (auto& b : a)
      put(b);
  }
  template <class T>
  void vec(const char*, std::vector<T>& v, int64_t, int64_t, double, double) { put(v); }
  void text(const char*, std::string& s, int64_t) { put(s); }
  void blob(const char*, tensor_blob& b, int64_t, int64_t, int32_t) { put(b); }
};

struct fields_probe {
  static constexpr bool largest = false;
  struct { int32_t width, context, vocab, layers; uint32_t max_text; } lim;
};

template <class T, class = void>
struct has_fields : std::false_type {};
template <class T>
struct has_fields<T, std::void_t<decltype(fields(std::declval<fields_probe&>(), std::declval<T&>()))>>
  : std::true_type {};

} // namespace caf_inspect

/// CAF's inspect of every protocol message, from its one list of fields
/// (so a message's fields are never listed twice).
template <class Inspector, class T>
auto inspect(Inspector& f, T& x)
  -> std::enable_if_t<caf_inspect::has_fields<T>::value, typename Inspector::result_type> {
  caf_inspect::caf_fields<Inspector> visit{{}, f, {}};
  fields(visit, x);
  if constexpr (!std::is_same_v<typename Inspector::result_type, void>)
    return visit.err;
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, edge_output& x) {
  return f(caf::meta::type_name("edge_output"), x.split, x.exit_states, x.compute_us);
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
           x.discarded_tokens, x.unverified_tokens, x.verdicts, x.verify_bytes, x.error, x.phases);
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

/// A session's uploaded rows not yet computed, [rows, cols], as they came:
/// one blob per upload (f16 or f32), in position order. The cloud layers
/// decode the parts straight into a step's input (decode_rows in
/// hidden_rows.hpp), so they are never concatenated first.
struct uploaded_rows {
  int32_t rows = 0;
  int32_t cols = 0;
  std::vector<tensor_blob> parts;

  /// Appends the rows of a checked blob (moved, never copied).
  void append(tensor_blob&& part);
  void clear();
  /// Empty when every part is a consistent blob of `expected_cols` values
  /// per row (0: any) and they hold `rows` rows, else what is wrong.
  std::string check(int32_t expected_cols) const;
};

/// One session's share of a cloud step: run its positions [start, start +
/// rows()) through the cloud layers (rows may be 0),
/// then answer the token after each position in `tokens_after`: the
/// cloud's choice under the session's `sampling`, verifying `drafts[i]`
/// when it is a token (docs/design.md §5; -1: no draft).
struct cloud_work {
  cloud_context_ptr ctx;
  int32_t start = 0;
  // Positions [start, start + prompt.size()) as tokens: the cloud layers
  // compute their split rows over layers [0, split) (open_session.prompt).
  // `states` holds the uploaded rows after them.
  std::vector<int32_t> prompt;
  uploaded_rows states;
  std::vector<int32_t> tokens_after;
  std::vector<int32_t> drafts;  // one per tokens_after
  draft_distributions q;        // the drafts' distributions, an entry per tokens_after
  sampler_options sampling;

  /// The positions this work computes: the prompt's and the uploaded.
  int32_t rows() const { return int32_t(prompt.size()) + states.rows; }
};

/// A naive request, with its session's sampling, for the cloud layers.
struct naive_work {
  naive_request request;
  sampler_options sampling;
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

// -- layer stages: the cloud layers cut across actors or cluster nodes ---------
//    (placement.cloud_stages, docs/cluster.md "Layer stages"; never on the
//    edge wire: CAF's network layer inside the cluster only)

/// One session's share of a stage step: its rows [start, start + rows.rows)
/// as they enter the stage's first layer (f32 [rows, n_embd]), then, at the
/// last stage, the cloud's choice of the token after each `tokens_after`
/// (verifying `drafts`, under `sampling`, as cloud_work). `key` names the
/// session's context on the stage (its KV cache and final states), cut back
/// to `start` when rows arrive (a rollback); 0: no context is kept (naive,
/// every position recomputed).
struct stage_work {
  uint64_t key = 0;
  int32_t start = 0;
  tensor_blob rows;
  std::vector<int32_t> tokens_after;
  std::vector<int32_t> drafts;
  draft_distributions q;  // an entry per tokens_after, as cloud_work
  sampling_params sampling;
};
template <class F> void fields(F& f, stage_work& x) {
  f.u64("key", x.key);
  f.i32("start", x.start, 0, f.lim.context - 1);
  f.blob("rows", x.rows, 0, f.lim.context, f.lim.width);
  f.vec("tokens_after", x.tokens_after, 0, f.lim.context, 0, f.lim.context - 1);
  f.vec("drafts", x.drafts, 0, f.lim.context, -1, f.lim.vocab - 1);
  draft_q_fields(f, x.q, f.lim.context);
  sampling_fields(f, x.sampling);
}

/// A work item's tokens, one per tokens_after, or why none were made.
struct stage_work_done {
  std::vector<int32_t> tokens;
  uint8_t error_code = 0;  // a ceco_errc; 0: none
  std::string error;
};
template <class F> void fields(F& f, stage_work_done& x) {
  f.vec("tokens", x.tokens, 0, f.lim.context, 0, f.lim.vocab - 1);
  f.u8("error_code", x.error_code, 0, 255);
  f.text("error", x.error, f.lim.max_text);
}

struct stage_step {
  std::vector<stage_work> work;
};
template <class F> void fields(F& f, stage_step& x) {
  f.vec("work", x.work, 0, f.lim.context, 0, 0);
}

struct stage_step_done {
  std::vector<stage_work_done> done;  // one per work, in order
  int64_t compute_us = 0;             // this stage's and every later one's
};
template <class F> void fields(F& f, stage_step_done& x) {
  f.vec("done", x.done, 0, f.lim.context, 0, 0);
  f.i64("compute_us", x.compute_us, 0, proto::max_us);
}

/// What a stage runs, checked by the node that sends it work: the same
/// model, and layers [first, n_layer).
struct stage_hello {
  uint64_t fingerprint = 0;
  int32_t n_layer = 0;
  int32_t first = 0;  // the stage's first layer (and every later stage's after it)
};
template <class F> void fields(F& f, stage_hello& x) {
  f.u64("fingerprint", x.fingerprint);
  f.i32("n_layer", x.n_layer, 0, f.lim.layers);
  f.i32("first", x.first, 0, f.lim.layers);
}

/// Layers [first, last) of the cloud's part, after the cloud layers' own
/// range (placement.cloud_stages): a stage_step runs every session's rows
/// through them in one pass and hands them on to the next stage, or, at the
/// last, through the final norm and classifier to the tokens. (close_atom,
/// key) forgets a session's context.
using layer_stage_actor = caf::typed_actor<
  caf::replies_to<stage_hello>::with<stage_hello>,
  caf::replies_to<stage_step>::with<stage_step_done>,
  caf::reacts_to<close_atom, uint64_t>>;

// -- actor interfaces ---------------------------------------------------------

// -- the cloud protocol: one list ---------------------------------------------

/// A request of the cloud protocol and the reply it gets.
template <class Request, class Reply>
struct rpc {
  using request = Request;
  using reply = Reply;
};
template <class... Rpcs>
struct rpc_list {};

namespace detail {
template <class... Lists>
struct join_rpcs;
template <class... As>
struct join_rpcs<rpc_list<As...>> {
  using type = rpc_list<As...>;
};
template <class... As, class... Bs, class... Rest>
struct join_rpcs<rpc_list<As...>, rpc_list<Bs...>, Rest...>
  : join_rpcs<rpc_list<As..., Bs...>, Rest...> {};
} // namespace detail

/// The lists one after the other.
template <class... Lists>
using join_rpcs = typename detail::join_rpcs<Lists...>::type;

/// The requests of one session (or opening one), as a context manager
/// answers them: the edge's cloud protocol and a worker's (across cloud
/// nodes) both carry them.
using session_rpcs = rpc_list<
  rpc<open_session, uint64_t>,
  rpc<upload_msg, int32_t>,
  rpc<draft_upload, verdict>,
  rpc<infer_request, infer_reply>,
  rpc<naive_request, infer_reply>,
  rpc<generate_request, generate_reply>,
  rpc<close_session, session_summary>,
  rpc<evaluate_request, exit_decision>>;

/// Every request an edge sends the cloud and its reply, in one list: cloud_api
/// is generated from it, and the link, the remote front, the cloud front, the
/// gateway and the wire bridge iterate it, so a new request is its struct
/// (proto/messages.hpp), its frame (net/frame.hpp), its handler and one line
/// here.
using cloud_protocol = join_rpcs<rpc_list<rpc<hello_msg, hello_msg>>, session_rpcs,
                                 rpc_list<rpc<upload_states, int32_t>>>;

namespace detail {
template <class Request, class List>
struct find_rpc {};  // not a request of the list: no `type`
template <class Request, class R, class... Rs>
struct find_rpc<Request, rpc_list<R, Rs...>>
  : std::conditional_t<std::is_same_v<Request, typename R::request>, R,
                       find_rpc<Request, rpc_list<Rs...>>> {};
template <class Request, class List, class = void>
struct in_list : std::false_type {};
template <class Request, class List>
struct in_list<Request, List, std::void_t<typename find_rpc<Request, List>::reply>>
  : std::true_type {};
template <class List>
struct typed_actor_of;
template <class... Rs>
struct typed_actor_of<rpc_list<Rs...>> {
  using type =
    caf::typed_actor<typename caf::replies_to<typename Rs::request>::template with<typename Rs::reply>...>;
};
} // namespace detail

/// The reply a request of the cloud protocol gets.
template <class Request>
using reply_t = typename detail::find_rpc<Request, cloud_protocol>::reply;
/// Whether `T` is a request of the cloud protocol.
template <class T>
constexpr bool is_cloud_request = detail::in_list<T, cloud_protocol>::value;

/// A behavior of `Behavior` type with one handler per request of `List`,
/// `make(rpc<Request, Reply>{})` each, then `others`.
template <class Behavior, class... Rs, class Make, class... Others>
Behavior behavior_of(rpc_list<Rs...>, Make make, Others... others) {
  return Behavior{make(Rs{})..., std::move(others)...};
}

/// What an edge sees of the cloud: every request of cloud_protocol.
using cloud_api = detail::typed_actor_of<cloud_protocol>::type;

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

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cloud_stats& x) {
  return f(caf::meta::type_name("cloud_stats"), x.sessions, x.context_bytes, x.steps,
           x.stepped_sessions, x.session_bytes, x.tokens, x.positions, x.refused_limit,
           x.refused_memory, x.expired, x.step_sizes);
}

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
/// alive until answered; the cloud layers compute them. evaluate_request:
/// refreshes the session, then asks the exit evaluator placed on the cloud.
using context_manager_actor = caf::typed_actor<
  caf::replies_to<open_session>::with<uint64_t>,
  caf::replies_to<upload_msg>::with<int32_t>,
  caf::replies_to<draft_upload>::with<verdict>,
  caf::replies_to<get_atom, uint64_t>::with<cloud_context_ptr>,
  caf::replies_to<infer_request>::with<infer_reply>,
  caf::replies_to<naive_request>::with<infer_reply>,
  caf::replies_to<generate_request>::with<generate_reply>,
  caf::replies_to<evaluate_request>::with<exit_decision>,
  caf::replies_to<close_session>::with<session_summary>,
  caf::replies_to<stats_atom>::with<cloud_stats>,
  caf::reacts_to<sweep_atom, uint64_t>>;

/// What a gateway sees of a worker's context manager across cloud nodes
/// (CAF's network layer; actors/session_router.hpp): the context manager's
/// interface less what only its own process may ask (get_atom's pointer,
/// the sweep timer), after a hello that checks the gateway holds the same
/// model, split, exits and placement.
using worker_protocol = join_rpcs<rpc_list<rpc<hello_msg, hello_msg>>, session_rpcs,
                                  rpc_list<rpc<stats_atom, cloud_stats>>>;
using worker_api = detail::typed_actor_of<worker_protocol>::type;

/// One worker as a gateway sees it.
struct worker_status {
  std::string name;      // "host:port", or "local N" in one process
  bool up = false;
  int64_t sessions = 0;  // open on it now, placed by this gateway
  int64_t placed = 0;    // sessions placed on it so far
  int64_t lost = 0;      // sessions that were on it when it went down
  int64_t joins = 0;     // times it (re)joined
};

/// A gateway's view of its cluster: (cluster_atom) to its session router.
struct cluster_status {
  std::vector<worker_status> workers;
  int64_t sessions = 0;       // open now, on all workers
  int64_t refused_full = 0;   // opens refused: every worker full
  int64_t refused_none = 0;   // opens refused: no worker up
};

/// A gateway's context manager: places each new session on a worker and
/// forwards every message of it there (actors/session_router.hpp).
/// (join_atom, name, worker) adds a worker, or replaces one of that name
/// that went down.
using session_router_actor = context_manager_actor::extend<
  caf::reacts_to<join_atom, std::string, worker_api>,
  caf::replies_to<cluster_atom>::with<cluster_status>>;

/// Layers [split, L) and the final head, plus the whole model for the cloud
/// strategy. A cloud_step catches up several sessions on their uploads and
/// answers their tokens in one pass. The cloud strategy's generate requests
/// are batched the same way: every generation in progress takes one step
/// together, (generate_atom) to itself, and a new one joins at the next step.
/// A generation is streamed: its session's first generate_request starts it,
/// every later one is a long poll answered once a token past its `from`
/// exists (docs/design.md §1). (close_atom, session): the session ended;
/// its generation's tokens are dropped once it is done.
/// (deliver_atom, id) is its own timer in profile mode (actors/profile_clock.hpp).
using cloud_layers_actor = caf::typed_actor<
  caf::replies_to<open_atom>::with<cloud_context_ptr>,
  caf::replies_to<cloud_step>::with<cloud_step_done>,
  caf::replies_to<naive_work>::with<infer_reply>,
  caf::replies_to<generate_request>::with<generate_reply>,
  caf::reacts_to<generate_atom>,
  caf::reacts_to<close_atom, uint64_t>,
  caf::reacts_to<deliver_atom, uint64_t>>;

/// Layers [0, split) on the edge with one KV cache per session. Replies with
/// the split-layer states of every position, in the wire dtype of the last
/// argument (wire_dtype: what the session's uploader sends), and the exit
/// layers' states of the last one (f32).
/// The last argument is the session's edge_step_stops ticket when it asked
/// (0 where nothing is ever stopped); (cancel_atom, session): the session's
/// step in flight is no longer wanted; (deliver_atom, id): its own timer in
/// profile mode.
using edge_layers_actor = caf::typed_actor<
  caf::replies_to<forward_atom, uint64_t, int32_t, std::vector<int32_t>, uint8_t,
                  uint64_t>::with<edge_output>,
  caf::reacts_to<cancel_atom, uint64_t>,
  caf::reacts_to<close_atom, uint64_t>,
  caf::reacts_to<deliver_atom, uint64_t>>;

/// Exit heads and the threshold decision for one position; (deliver_atom,
/// id): its own timer in profile mode.
using exit_evaluator_actor = caf::typed_actor<
  caf::replies_to<evaluate_request>::with<exit_decision>,
  caf::reacts_to<deliver_atom, uint64_t>>;

/// Where uploads go: the context manager, or a cloud front / link to it.
using upload_sink = caf::typed_actor<caf::replies_to<upload_msg>::with<int32_t>,
                                     caf::replies_to<draft_upload>::with<verdict>>;

/// Sends split-layer states to the cloud in the configured dtype; replies
/// once the cloud acknowledged them (a caller that does not wait is never
/// held up); a draft_upload (f32 states) likewise, answered by its verdict.
using uploader_actor = caf::typed_actor<
  caf::replies_to<upload_states>::with<int32_t>,
  caf::replies_to<draft_upload>::with<verdict>>;

/// One response: runs the token loop of its strategy and reports.
/// (cancel_atom) ends it early: the token loop stops, its cloud session is
/// closed and the report (tokens so far, error "cancelled") is delivered.
/// (reconnect_atom) is its own timer while it waits for a lost cloud.
using edge_session_actor = caf::typed_actor<caf::replies_to<run_atom>::with<response_report>,
                                            caf::reacts_to<cancel_atom>,
                                            caf::reacts_to<reconnect_atom>>;

/// The nodes whose hello a front (the cloud front, a worker's front)
/// accepted: only they, and the front's own process, are served.
class greeted_nodes {
public:
  void add(const caf::strong_actor_ptr& sender);
  /// handshake_failed for a sender of another node that has not passed hello.
  caf::error refuse_stranger(const caf::strong_actor_ptr& sender, const caf::node_id& here,
                             const char* what) const;

private:
  std::set<caf::node_id> nodes_;
};

/// Registers every message type above with a CAF configuration.
void register_message_types(caf::actor_system_config& cfg);

} // namespace ceco

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_context_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_step)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::naive_work)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cloud_step_done)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ceco::cluster_status)
