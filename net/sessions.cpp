#include "net/sessions.hpp"

namespace ceco::wire {

std::optional<uint64_t> session_of(const message& request) {
  if (!is_request(type_of(request)))
    return std::nullopt;
  return std::visit(
    [](const auto& m) -> std::optional<uint64_t> {
      if constexpr (proto::names_session<std::decay_t<decltype(m)>>)
        return m.session;
      else
        return std::nullopt;
    },
    request);
}

bool session_owners::add(connection_id conn, uint64_t session) {
  if (!owner_.emplace(session, conn).second)
    return false;
  sessions_[conn].insert(session);
  return true;
}

bool session_owners::owns(connection_id conn, uint64_t session) const {
  auto it = owner_.find(session);
  return it != owner_.end() && it->second == conn;
}

void session_owners::remove(connection_id conn, uint64_t session) {
  if (!owns(conn, session))
    return;
  owner_.erase(session);
  auto it = sessions_.find(conn);
  it->second.erase(session);
  if (it->second.empty())
    sessions_.erase(it);
}

void session_owners::forget(uint64_t session) {
  auto it = owner_.find(session);
  if (it != owner_.end())
    remove(it->second, session);
}

std::vector<uint64_t> session_owners::release(connection_id conn) {
  std::vector<uint64_t> out;
  auto it = sessions_.find(conn);
  if (it == sessions_.end())
    return out;
  out.assign(it->second.begin(), it->second.end());
  for (auto s : out)
    owner_.erase(s);
  sessions_.erase(it);
  return out;
}

size_t session_owners::count(connection_id conn) const {
  auto it = sessions_.find(conn);
  return it == sessions_.end() ? 0 : it->second.size();
}

} // namespace ceco::wire
