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
#include <type_traits>
#include <variant>
#include <vector>

#include "proto/messages.hpp"

namespace ceco::wire {

constexpr uint32_t frame_magic = 0x4F434543;  // "CECO" as little-endian bytes
constexpr uint16_t wire_version = 1;
constexpr size_t header_size = 16;

// The protocol's messages (proto/messages.hpp) by the names the wire code
// has always used.
using ceco::auth_challenge;
using ceco::auth_ok;
using ceco::auth_response;
using ceco::close_session;
using ceco::error_frame;
using ceco::evaluate_request;
using ceco::hello_reply;
using ceco::mac;
using ceco::nonce;
using ceco::nonce_size;
using ceco::mac_size;
using ceco::open_reply;
using ceco::open_session;
using ceco::ping;
using ceco::pong;
using ceco::positions_reply;
using ceco::upload_states;
using ceco::to_string;

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

/// A frame's or a connection's error: one of ceco_errc's codes, the link's
/// own (is_link_error) except where a peer's error frame carries another.
using wire_errc = ceco_errc;

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
namespace detail {

/// Adds up the bytes the codec's writer would write, without writing them.
struct size_counter {
  static constexpr bool largest = false;
  wire_limits lim;  // bounds are not checked while counting
  uint64_t total = 0;

  void u64(const char*, uint64_t&) { total += 8; }
  void u32(const char*, uint32_t&) { total += 4; }
  void u8(const char*, uint8_t&, int, int) { total += 1; }
  void i32(const char*, int32_t&, int64_t, int64_t) { total += 4; }
  void i64(const char*, int64_t&, int64_t, int64_t) { total += 8; }
  void f32(const char*, float&, double, double) { total += 4; }
  void boolean(const char*, bool&) { total += 1; }
  template <size_t N>
  void bytes(const char*, std::array<uint8_t, N>&) { total += N; }
  template <class T>
  void vec(const char*, std::vector<T>& v, int64_t, int64_t, double, double) {
    total += 4 + uint64_t(v.size()) * sizeof(T);  // a uint32 count, then the elements
  }
  void text(const char*, std::string& s, int64_t) { total += 4 + uint64_t(s.size()); }
  void blob(const char*, tensor_blob& b, int64_t, int64_t, int32_t) {
    total += 9 + b.bytes.size();  // dtype, rows, cols, then the bytes
  }
};

template <class T, class Variant>
struct is_alternative;
template <class T, class... Ts>
struct is_alternative<T, std::variant<Ts...>> : std::disjunction<std::is_same<T, Ts>...> {};

} // namespace detail

/// Whether `T` is a message of the wire (an alternative of `message`).
template <class T>
constexpr bool is_frame_message = detail::is_alternative<T, message>::value;

/// Bytes encode() writes for a frame carrying `x` (header included), counted
/// from its fields without encoding or copying it: what a link to a remote
/// cloud counts.
template <class T, class = std::enable_if_t<is_frame_message<T>>>
uint64_t encoded_size(const T& x) {
  detail::size_counter c;
  fields(c, const_cast<T&>(x));  // the counter only reads
  return header_size + c.total;
}
uint64_t encoded_size(const message& msg);

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
