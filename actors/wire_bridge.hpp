#pragma once

// The cloud_api messages of actors/messages.hpp as frames of net/frame.hpp,
// both ways: what the edge's remote front sends and decodes, what the
// cloud's gateway decodes and answers, and what a link to a remote cloud
// counts (the encoded frame's size).

#include <cstdint>

#include "actors/messages.hpp"
#include "net/frame.hpp"

namespace ceco {

// -- requests: the cloud_api message -> its frame ----------------------------

wire::message request_frame(hello_msg h);  // the secret is dropped: the handshake proves it
wire::message request_frame(open_atom);
wire::message request_frame(upload_msg m);
wire::message request_frame(draft_upload m);
wire::message request_frame(infer_request r);
wire::message request_frame(naive_request r);
wire::message request_frame(generate_request r);
wire::message request_frame(close_atom, uint64_t session);
wire::message request_frame(evaluate_atom, uint64_t session, tensor_blob exit_states);
wire::message request_frame(upload_atom, uint64_t session, int32_t start, tensor_blob states);

// -- replies: the cloud_api reply -> its frame --------------------------------

wire::message reply_frame(hello_msg h);
wire::message reply_frame(uint64_t session);   // to open
wire::message reply_frame(int32_t positions);  // to upload and upload_states
wire::message reply_frame(infer_reply r);
wire::message reply_frame(verdict v);
wire::message reply_frame(generate_reply r);
wire::message reply_frame(session_summary s);
wire::message reply_frame(exit_decision d);
wire::message reply_frame(const caf::error& err);

/// The error a frame carries: a ceco error keeps its code and text; a
/// transport error (wire_errc) becomes cloud_unreachable naming it, except a
/// request this side could not encode (not_encodable), a bad_request.
caf::error error_of(const wire::error_frame& e);
caf::error error_of(const wire::wire_error& e);

/// Bytes of the frame that carries a cloud_api request (its arguments) or a
/// reply, header included, as encode() writes it: counted from the fields,
/// never encoded, and a message that is a frame as it is (an upload, a draft)
/// is not copied.
template <class... Ts>
int64_t request_frame_bytes(const Ts&... xs) {
  if constexpr (sizeof...(Ts) == 1 && (wire::is_frame_message<Ts> && ...))
    return int64_t(wire::encoded_size(xs...));
  else
    return int64_t(wire::encoded_size(request_frame(xs...)));
}
template <class Reply>
int64_t reply_frame_bytes(const Reply& r) {
  if constexpr (wire::is_frame_message<Reply> && !std::is_same_v<Reply, hello_msg>)
    return int64_t(wire::encoded_size(r));
  else
    return int64_t(wire::encoded_size(reply_frame(r)));
}

/// The reply of type `Reply` a frame carries, or the error it carries (an
/// error frame, a transport error, or a frame of another type).
template <class Reply>
caf::expected<Reply> reply_of(wire::result<wire::message>&& r);

} // namespace ceco
