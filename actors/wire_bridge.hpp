#pragma once

// The cloud_api messages of actors/messages.hpp as frames of net/frame.hpp,
// both ways: what the edge's remote front sends and decodes, what the
// cloud's gateway decodes and answers, and what a link to a remote cloud
// counts (the encoded frame's size). Every request of cloud_protocol is a
// frame as it is; a reply is one, or (hello, the session id of an open, the
// positions of an upload) wrapped in its reply frame (reply_frame_of).

#include <cstdint>
#include <type_traits>

#include "actors/messages.hpp"
#include "net/frame.hpp"

namespace ceco {

// -- requests: the cloud_api message -> its frame ----------------------------

wire::message request_frame(hello_msg h);  // the secret is dropped: the handshake proves it
template <class T, class = std::enable_if_t<is_cloud_request<T> && wire::is_frame_message<T>>>
wire::message request_frame(T x) {
  return x;
}

// -- replies: the cloud_api reply <-> its frame -------------------------------

/// The frame that carries a reply of type `Reply`: the reply itself, unless
/// it is not a frame of its own.
template <class Reply>
struct reply_frame_of {
  static_assert(wire::is_frame_message<Reply>, "a reply that is no frame needs its wrapper here");
  using type = Reply;
};
template <> struct reply_frame_of<hello_msg> { using type = wire::hello_reply; };
template <> struct reply_frame_of<uint64_t> { using type = wire::open_reply; };
template <> struct reply_frame_of<int32_t> { using type = wire::positions_reply; };

wire::message reply_frame(hello_msg h);
wire::message reply_frame(uint64_t session);   // to open
wire::message reply_frame(int32_t positions);  // to upload and upload_states
template <class Reply, class = std::enable_if_t<wire::is_frame_message<Reply> &&
                                                !std::is_same_v<Reply, hello_msg>>>
wire::message reply_frame(Reply r) {
  return r;
}
wire::message reply_frame(const caf::error& err);

/// The error a frame carries: a ceco error keeps its code and text; a
/// transport error (wire_errc) becomes cloud_unreachable naming it, except a
/// request this side could not encode (not_encodable), a bad_request.
caf::error error_of(const wire::error_frame& e);
caf::error error_of(const wire::wire_error& e);

/// Bytes of the frame that carries a cloud_api request or a reply, header
/// included, as encode() writes it: counted from the fields, never encoded,
/// and never copied but for a reply wrapped in its frame (a number or a hello).
template <class T>
int64_t request_frame_bytes(const T& x) {
  static_assert(wire::is_frame_message<T>);
  return int64_t(wire::encoded_size(x));  // a hello's secret is no field: never counted
}
template <class Reply>
int64_t reply_frame_bytes(const Reply& r) {
  if constexpr (std::is_same_v<typename reply_frame_of<Reply>::type, Reply>)
    return int64_t(wire::encoded_size(r));
  else
    return int64_t(wire::encoded_size(reply_frame(r)));
}
int64_t reply_frame_bytes(const caf::error& err);

namespace detail {
inline hello_msg unwrap(wire::hello_reply&& r) { return std::move(r.hello); }
inline uint64_t unwrap(wire::open_reply&& r) { return r.session; }
inline int32_t unwrap(wire::positions_reply&& r) { return r.positions; }
template <class T> T unwrap(T&& x) { return std::move(x); }
/// The error of a reply frame of type `got` where one of type `wanted` belongs.
caf::error wrong_frame(wire::frame_type got, wire::frame_type wanted);
} // namespace detail

/// The reply of type `Reply` a frame carries, or the error it carries (an
/// error frame, a transport error, or a frame of another type).
template <class Reply>
caf::expected<Reply> reply_of(wire::result<wire::message>&& r) {
  if (!wire::ok(r))
    return error_of(std::get<1>(r));
  auto& msg = std::get<0>(r);
  using frame_type = typename reply_frame_of<Reply>::type;
  if (auto* x = std::get_if<frame_type>(&msg))
    return Reply(detail::unwrap(std::move(*x)));
  if (auto* e = std::get_if<wire::error_frame>(&msg))
    return error_of(*e);
  return detail::wrong_frame(wire::type_of(msg), wire::type_of(wire::message(frame_type{})));
}

} // namespace ceco
