#include "actors/wire_bridge.hpp"

#include <fmt/format.h>

namespace ceco {

wire::message request_frame(hello_msg h) {
  h.secret.clear();
  return h;
}

wire::message reply_frame(hello_msg h) {
  h.secret.clear();
  return wire::hello_reply{std::move(h)};
}
wire::message reply_frame(uint64_t session) { return wire::open_reply{session}; }
wire::message reply_frame(int32_t positions) { return wire::positions_reply{positions}; }
wire::message reply_frame(const caf::error& err) {
  if (err.category() == caf::atom("ceco"))
    return wire::error_frame{err.code(), describe(err)};
  return wire::error_frame{uint8_t(ceco_errc::compute_failed), describe(err)};
}

int64_t reply_frame_bytes(const caf::error& err) {
  return int64_t(wire::encoded_size(reply_frame(err)));
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

caf::error detail::wrong_frame(wire::frame_type got, wire::frame_type wanted) {
  return make_error(ceco_errc::unknown_message,
                    fmt::format("the cloud answered with a {} frame where a {} frame belongs",
                                wire::to_string(got), wire::to_string(wanted)));
}

} // namespace ceco
