#include "actors/messages.hpp"

#include <fmt/format.h>

#include "net/frame.hpp"

namespace ceco {

namespace {

const caf::atom_value ceco_category = caf::atom("ceco");

/// A protocol message under the name of its frame (numbers are CAF's own).
template <class T>
void add_protocol_type(caf::actor_system_config& cfg) {
  if constexpr (!std::is_arithmetic_v<T>)
    cfg.add_message_type<T>(wire::to_string(wire::type_of(wire::message(T{}))));
}

template <class... Rs>
void add_protocol_types(caf::actor_system_config& cfg, rpc_list<Rs...>) {
  (add_protocol_type<typename Rs::request>(cfg), ...);
  (add_protocol_type<typename Rs::reply>(cfg), ...);
}

} // namespace

bool is(const caf::error& err, ceco_errc code) {
  return err.category() == ceco_category && err.code() == static_cast<uint8_t>(code);
}

caf::error make_error(ceco_errc code, std::string what) {
  return caf::error(static_cast<uint8_t>(code), ceco_category, caf::make_message(std::move(what)));
}

void uploaded_rows::append(tensor_blob&& part) {
  rows += part.rows;
  cols = part.cols;
  parts.push_back(std::move(part));
}

void uploaded_rows::clear() {
  rows = 0;
  parts.clear();
}

std::string uploaded_rows::check(int32_t expected_cols) const {
  int64_t sum = 0;
  for (const auto& part : parts) {
    if (auto bad = part.check(expected_cols); !bad.empty())
      return bad;
    if (part.cols != cols)
      return fmt::format("a part of rows of {} values among rows of {}", part.cols, cols);
    sum += part.rows;
  }
  if (sum != rows)
    return fmt::format("{} rows, but the parts hold {}", rows, sum);
  return {};
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  if (err.category() == ceco_category) {
    std::string what;
    if (err.context().match_elements<std::string>())
      what = err.context().get_as<std::string>(0);
    return fmt::format("{}: {}", to_string(static_cast<ceco_errc>(err.code())), what);
  }
  return caf::to_string(err);
}

void greeted_nodes::add(const caf::strong_actor_ptr& sender) {
  if (sender)
    nodes_.insert(sender->node());
}

caf::error greeted_nodes::refuse_stranger(const caf::strong_actor_ptr& sender,
                                          const caf::node_id& here, const char* what) const {
  if (!sender || sender->node() == here || nodes_.count(sender->node()))
    return {};
  return make_error(ceco_errc::handshake_failed,
                    fmt::format("send hello_msg first: {} has not passed the handshake", what));
}

void register_message_types(caf::actor_system_config& cfg) {
  add_protocol_types(cfg, cloud_protocol{});
  cfg.add_message_type<std::vector<int32_t>>("ceco_ids");
  cfg.add_message_type<tensor_blob>("tensor_blob");
  cfg.add_message_type<edge_output>("edge_output");
  cfg.add_message_type<link_counters>("link_counters");
  cfg.add_message_type<response_report>("response_report");
  cfg.add_message_type<cloud_stats>("cloud_stats");
  cfg.add_message_type<stage_hello>("stage_hello");
  cfg.add_message_type<stage_step>("stage_step");
  cfg.add_message_type<stage_step_done>("stage_step_done");
  cfg.add_error_category(ceco_category, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string what = ctx.match_elements<std::string>() ? ctx.get_as<std::string>(0) : "";
    return fmt::format("ceco::{}: {}", to_string(static_cast<ceco_errc>(code)), what);
  });
}

} // namespace ceco
