#pragma once

// ceco's edge-cloud wire protocol: length-prefixed frames, one message each.
//
// Every frame is a 16-byte header and a payload (all integers little-endian):
//
// | bytes | field        | value                                               |
// |-------|--------------|-----------------------------------------------------|
// | 0-3   | magic        | "CECO" (0x43 0x45 0x43 0x4F)                        |
// | 4-5   | version      | wire_version                                        |
// | 6-7   | type         | frame_type                                          |
// | 8-11  | request id   | set by the requester, echoed by its reply           |
// | 12-15 | payload size | bytes after the header, at most the type's maximum |
//
// Payloads are cereal binary archives of the message's fields in a fixed
// order: scalars as they are, vectors and strings as a uint32 count and their
// elements, tensors as dtype (uint8), rows, cols (int32) and their bytes.
// Nothing else: a frame decodes to exactly one message or to a wire_error.
//
// Decoding checks every limit before it allocates: the header's payload size
// against the type's largest legal payload, each count against its bound and
// the bytes left, rows x cols against the model's width and context, token
// ids against the vocabulary. A decoded message re-encodes to the same bytes.

#include <array>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "actors/messages.hpp"

namespace ceco::wire {

constexpr uint32_t frame_magic = 0x4F434543;  // "CECO" as little-endian bytes
constexpr uint16_t wire_version = 1;
constexpr size_t header_size = 16;
constexpr size_t nonce_size = 32;
constexpr size_t mac_size = 32;  // HMAC-SHA256

using nonce = std::array<uint8_t, nonce_size>;
using mac = std::array<uint8_t, mac_size>;

// -- messages that are not already in actors/messages.hpp ---------------------

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
/// The cloud's hello, the reply to the edge's hello_msg. hello_msg::secret
/// never travels: the handshake above proves it.
struct hello_reply {
  hello_msg hello;
};
struct open_session {};
struct open_reply {
  uint64_t session = 0;
};
/// Reply to upload_msg and upload_states: positions the cloud holds.
struct positions_reply {
  int32_t positions = 0;
};
struct close_session {
  uint64_t session = 0;
};
/// (evaluate_atom, session, exit states) for an exit evaluator on the cloud.
struct evaluate_request {
  uint64_t session = 0;
  tensor_blob exit_states;
};
/// (upload_atom, session, start, states) for an uploader on the cloud.
struct upload_states {
  uint64_t session = 0;
  int32_t start = 0;
  tensor_blob states;
};
struct ping {
  uint64_t stamp = 0;
};
struct pong {
  uint64_t stamp = 0;
};
/// Any request may be answered by an error: a ceco_errc or a wire_errc code.
struct error_frame {
  uint8_t code = 0;
  std::string text;
};

/// One alternative per frame_type, in the order of frame_type (type = index + 1).
using message = std::variant<auth_challenge, auth_response, auth_ok, hello_msg, hello_reply,
                             open_session, open_reply, upload_msg, positions_reply,
                             infer_request, infer_reply, naive_request, generate_request,
                             generate_reply, close_session, session_summary, evaluate_request,
                             exit_decision, upload_states, ping, pong, error_frame,
                             draft_upload, verdict>;

enum class frame_type : uint16_t {
  auth_challenge = 1,
  auth_response,
  auth_ok,
  hello,
  hello_reply,
  open_session,
  open_reply,
  upload,
  positions_reply,
  infer_request,
  infer_reply,
  naive_request,
  generate_request,
  generate_reply,
  close_session,
  session_summary,
  evaluate_request,
  exit_decision,
  upload_states,
  ping,
  pong,
  error,
  draft_upload,  // speculative and exact uploads (protocol 3)
  verdict,
};
constexpr uint16_t frame_type_count = std::variant_size_v<message>;
static_assert(uint16_t(frame_type::verdict) == frame_type_count);

const char* to_string(frame_type t);
inline frame_type type_of(const message& m) { return frame_type(m.index() + 1); }
/// Frames an edge sends once authenticated (hello, open, upload, ..., ping).
bool is_request(frame_type t);

// -- limits and errors --------------------------------------------------------

/// What a peer's frames are checked against: the receiving node's model.
struct wire_limits {
  int32_t width = 0;        // n_embd: cols of every tensor
  int32_t context = 0;      // positions: rows, pos, start, prompt and token counts
  int32_t vocab = 0;        // token ids are 0..vocab-1
  int32_t layers = 0;       // n_layer: exits, split, exit rows
  uint32_t max_text = 4096; // error texts
  /// Payload bytes of the largest legal frame; 0 = the largest these limits allow.
  uint32_t max_payload = 0;

  /// Limits for a model; max_payload is the largest legal payload.
  static wire_limits for_model(int32_t width, int32_t context, int32_t vocab, int32_t layers);
};

enum class wire_errc : uint8_t {
  bad_header = 100,  // magic, version or type unknown
  too_large,         // payload size over the type's or the frame cap
  bad_field,         // a field outside its range
  truncated,         // the payload ends inside a field
  trailing_bytes,    // bytes left after the last field
  not_allowed,       // a frame the connection's state does not accept
  too_many_requests, // the connection's queue is full
  closed,            // the connection closed
  timed_out,         // a deadline passed
  auth_failed,       // the peer did not prove the shared secret
  io,                // socket error
  not_encodable,     // a message this side cannot encode (outside the bounds): not sent
};
const char* to_string(wire_errc code);

/// Why a frame was refused or a connection failed.
struct wire_error {
  wire_errc code = wire_errc::bad_field;
  std::string text;  // names the field, the expected and the actual value
};

/// Either a value or the error that stopped it.
template <class T>
using result = std::variant<T, wire_error>;
template <class T>
bool ok(const result<T>& r) { return r.index() == 0; }

struct frame_header {
  frame_type type{};
  uint32_t request_id = 0;
  uint32_t payload_size = 0;
};

struct frame {
  uint32_t request_id = 0;
  message msg;
};

// -- codec --------------------------------------------------------------------

/// Header and payload of `msg`; an error when a field is out of range for
/// encoding (a count over uint32, a payload over `limits.max_payload` when set).
result<std::vector<uint8_t>> encode(uint32_t request_id, const message& msg,
                                    const wire_limits& limits = {});
/// Checks magic, version, type and the payload size against the type's limit
/// (read before the payload, so an oversized frame is refused unread).
result<frame_header> parse_header(const uint8_t* bytes, const wire_limits& limits);
/// The payload of a frame whose header passed parse_header.
result<message> decode_payload(frame_type type, const uint8_t* payload, size_t size,
                               const wire_limits& limits);
/// One whole frame (header + payload, nothing after).
result<frame> decode(const uint8_t* bytes, size_t size, const wire_limits& limits);
/// Largest legal payload of `type` under `limits` (before the frame cap).
uint64_t max_payload_of(frame_type type, const wire_limits& limits);

} // namespace ceco::wire
