#include "net/auth.hpp"

#include <cerrno>
#include <cstring>
#include <system_error>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>

namespace ceco::wire {

void random_bytes(uint8_t* out, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = getrandom(out + done, n - done, 0);
    if (got < 0) {
      if (errno == EINTR)
        continue;
      throw std::system_error(errno, std::generic_category(), "getrandom");
    }
    done += size_t(got);
  }
}

nonce random_nonce() {
  nonce n;
  random_bytes(n.data(), n.size());
  return n;
}

uint64_t random_session_id() {
  uint64_t id = 0;
  while (id == 0)
    random_bytes(reinterpret_cast<uint8_t*>(&id), sizeof(id));
  return id;
}

mac auth_mac(const std::string& secret, auth_role role, const nonce& server_nonce,
             const nonce& client_nonce) {
  static constexpr char client_label[] = "ceco client";
  static constexpr char server_label[] = "ceco server";
  const char* label = role == auth_role::client ? client_label : server_label;
  uint8_t data[sizeof(client_label) + 2 * nonce_size];
  static_assert(sizeof(client_label) == sizeof(server_label));
  std::memcpy(data, label, sizeof(client_label));
  std::memcpy(data + sizeof(client_label), server_nonce.data(), nonce_size);
  std::memcpy(data + sizeof(client_label) + nonce_size, client_nonce.data(), nonce_size);
  mac out{};
  unsigned int size = 0;
  HMAC(EVP_sha256(), secret.data(), int(secret.size()), data, sizeof(data), out.data(), &size);
  return out;
}

bool same_mac(const mac& a, const mac& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

} // namespace ceco::wire
