#pragma once

// A raw TCP peer of a wire server (net/transport.hpp), for hostile-peer
// tests: it sends whatever bytes it is given and reads what comes back.

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <asio.hpp>
#include <poll.h>
#include <sys/socket.h>

#include "net/auth.hpp"
#include "net/frame.hpp"

namespace ceco::test {

using namespace ceco::wire;

/// A raw TCP peer of a wire server: bytes in, bytes out, frames checked
/// against `limits`.
struct raw_wire_peer {
  raw_wire_peer(uint16_t port, wire_limits lim) : limits(lim), socket(io) {
    socket.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  void send(const std::vector<uint8_t>& bytes) {
    asio::error_code ec;
    asio::write(socket, asio::buffer(bytes), ec);
  }
  /// Reads `n` bytes within `ms`; empty if the connection closed or nothing came.
  std::vector<uint8_t> read(size_t n, int ms = 2000) {
    std::vector<uint8_t> out;
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (out.size() < n && std::chrono::steady_clock::now() < until) {
      pollfd p{socket.native_handle(), POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (::poll(&p, 1, int(std::max<int64_t>(left.count(), 0))) <= 0)
        break;
      uint8_t buf[4096];
      auto got = ::recv(socket.native_handle(), buf, std::min(sizeof(buf), n - out.size()), 0);
      if (got <= 0)
        return {};
      out.insert(out.end(), buf, buf + got);
    }
    return out.size() == n ? out : std::vector<uint8_t>{};
  }
  /// Milliseconds until the server closes the connection (reading and
  /// dropping what it sends), or -1 if it is still open after `ms`.
  int64_t closed_within(int ms) {
    auto start = std::chrono::steady_clock::now();
    auto until = start + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{socket.native_handle(), POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (::poll(&p, 1, int(std::max<int64_t>(left.count(), 0))) <= 0)
        continue;
      uint8_t buf[4096];
      if (::recv(socket.native_handle(), buf, sizeof(buf), 0) <= 0)
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    }
    return -1;
  }
  /// The client side of the handshake, by hand.
  void authenticate(const std::string& s) {
    auto challenge_bytes = read(header_size + nonce_size);
    REQUIRE(challenge_bytes.size() == header_size + nonce_size);
    auto challenge = std::get<auth_challenge>(
      std::get<frame>(decode(challenge_bytes.data(), challenge_bytes.size(), limits)).msg);
    auto cn = random_nonce();
    send(std::get<std::vector<uint8_t>>(
      encode(0, auth_response{cn, auth_mac(s, auth_role::client, challenge.server_nonce, cn)}, limits)));
    auto ok_bytes = read(header_size + mac_size);
    REQUIRE(ok_bytes.size() == header_size + mac_size);
  }
  /// The next frame the server sends.
  result<frame> next_frame() {
    auto header = read(header_size);
    if (header.empty())
      return wire_error{wire_errc::closed, "closed"};
    auto h = std::get<frame_header>(parse_header(header.data(), limits));
    auto payload = read(h.payload_size);
    header.insert(header.end(), payload.begin(), payload.end());
    return decode(header.data(), header.size(), limits);
  }

  wire_limits limits;
  asio::io_context io;
  asio::ip::tcp::socket socket;
};


} // namespace ceco::test
