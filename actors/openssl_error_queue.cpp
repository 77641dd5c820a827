// OpenSSL's I/O calls with the thread's error queue emptied first.
//
// SSL_get_error() reports SSL_ERROR_SSL whenever the calling thread's error
// queue holds an entry, so OpenSSL requires the queue to be empty before each
// TLS I/O call. CAF 0.17's OpenSSL module (the cluster's transport,
// actors/cluster.hpp) does not empty it: a peer that fails the TLS handshake
// on a worker's cluster port leaves an entry on the multiplexer thread, and
// the next read on a healthy connection from a gateway is taken for a fatal
// error, dropping that gateway and every session it placed there. These
// definitions stand in front of libssl's (the executables export them, see
// CMakeLists.txt), empty the queue, and call libssl's own.

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace {

template <class Fn>
Fn next_definition(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" {

int SSL_read(SSL* ssl, void* buf, int num) {
  static auto real = next_definition<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  static auto real = next_definition<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_accept(SSL* ssl) {
  static auto real = next_definition<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return real(ssl);
}

int SSL_connect(SSL* ssl) {
  static auto real = next_definition<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return real(ssl);
}

} // extern "C"
