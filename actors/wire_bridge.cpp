#include "actors/wire_bridge.hpp"

#include <fmt/format.h>

namespace ceco {

wire::message request_frame(hello_msg h) {
  h.secret.clear();
  return h;
}
wire::message request_frame(open_atom) { return wire::open_session{}; }
wire::message request_frame(upload_msg m) { return m; }
wire::message request_frame(draft_upload m) { return m; }
wire::message request_frame(infer_request r) { return r; }
wire::message request_frame(naive_request r) { return r; }
wire::message request_frame(generate_request r) { return r; }
wire::message request_frame(close_atom, uint64_t session) { return wire::close_session{session}; }
wire::message request_frame(evaluate_atom, uint64_t session, tensor_blob exit_states) {
  return wire::evaluate_request{session, std::move(exit_states)};
}
wire::message request_frame(upload_atom, uint64_t session, int32_t start, tensor_blob states) {
  return wire::upload_states{session, start, std::move(states)};
}

wire::message reply_frame(hello_msg h) {
  h.secret.clear();
  return wire::hello_reply{std::move(h)};
}
wire::message reply_frame(uint64_t session) { return wire::open_reply{session}; }
wire::message reply_frame(int32_t positions) { return wire::positions_reply{positions}; }
wire::message reply_frame(infer_reply r) { return r; }
wire::message reply_frame(verdict v) { return v; }
wire::message reply_frame(generate_reply r) { return r; }
wire::message reply_frame(session_summary s) { return s; }
wire::message reply_frame(exit_decision d) { return d; }
wire::message reply_frame(const caf::error& err) {
  if (err.category() == caf::atom("ceco"))
    return wire::error_frame{err.code(), describe(err)};
  return wire::error_frame{uint8_t(ceco_errc::compute_failed), describe(err)};
}

caf::error error_of(const wire::error_frame& e) {
  if (!is_known(e.code))
    return make_error(ceco_errc::cloud_unreachable,
                      fmt::format("the cloud answered error code {}, which this edge does not "
                                  "know (protocol {}): {}", int(e.code), protocol_version, e.text));
  const auto code = ceco_errc(e.code);
  if (!is_link_error(code)) {
    // The text is "code: what" (describe on the cloud); keep the what.
    const std::string prefix = std::string(to_string(code)) + ": ";
    auto what = e.text.compare(0, prefix.size(), prefix) == 0 ? e.text.substr(prefix.size()) : e.text;
    return make_error(code, std::move(what));
  }
  return make_error(ceco_errc::cloud_unreachable,
                    fmt::format("the cloud answered {}: {}", to_string(code), e.text));
}

caf::error error_of(const wire::wire_error& e) {
  if (e.code == wire::wire_errc::not_encodable)  // refused here: the link is fine
    return make_error(ceco_errc::bad_request, e.text);
  return make_error(ceco_errc::cloud_unreachable,
                    fmt::format("{}: {}", wire::to_string(e.code), e.text));
}

namespace {

template <class Reply>
struct reply_frame_of;
template <> struct reply_frame_of<hello_msg> { using type = wire::hello_reply; };
template <> struct reply_frame_of<uint64_t> { using type = wire::open_reply; };
template <> struct reply_frame_of<int32_t> { using type = wire::positions_reply; };
template <> struct reply_frame_of<infer_reply> { using type = infer_reply; };
template <> struct reply_frame_of<verdict> { using type = verdict; };
template <> struct reply_frame_of<generate_reply> { using type = generate_reply; };
template <> struct reply_frame_of<session_summary> { using type = session_summary; };
template <> struct reply_frame_of<exit_decision> { using type = exit_decision; };

hello_msg unwrap(wire::hello_reply&& r) { return std::move(r.hello); }
uint64_t unwrap(wire::open_reply&& r) { return r.session; }
int32_t unwrap(wire::positions_reply&& r) { return r.positions; }
template <class T> T unwrap(T&& x) { return std::move(x); }

} // namespace

template <class Reply>
caf::expected<Reply> reply_of(wire::result<wire::message>&& r) {
  if (!wire::ok(r))
    return error_of(std::get<1>(r));
  auto& msg = std::get<0>(r);
  using frame_type = typename reply_frame_of<Reply>::type;
  if (auto* x = std::get_if<frame_type>(&msg))
    return Reply(unwrap(std::move(*x)));
  if (auto* e = std::get_if<wire::error_frame>(&msg))
    return error_of(*e);
  return make_error(ceco_errc::unknown_message,
                    fmt::format("the cloud answered with a {} frame where a {} frame belongs",
                                wire::to_string(wire::type_of(msg)),
                                wire::to_string(wire::type_of(wire::message(frame_type{})))));
}

template caf::expected<hello_msg> reply_of<hello_msg>(wire::result<wire::message>&&);
template caf::expected<uint64_t> reply_of<uint64_t>(wire::result<wire::message>&&);
template caf::expected<int32_t> reply_of<int32_t>(wire::result<wire::message>&&);
template caf::expected<infer_reply> reply_of<infer_reply>(wire::result<wire::message>&&);
template caf::expected<verdict> reply_of<verdict>(wire::result<wire::message>&&);
template caf::expected<generate_reply> reply_of<generate_reply>(wire::result<wire::message>&&);
template caf::expected<session_summary> reply_of<session_summary>(wire::result<wire::message>&&);
template caf::expected<exit_decision> reply_of<exit_decision>(wire::result<wire::message>&&);

} // namespace ceco
