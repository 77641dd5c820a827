#pragma once

// `ceco serve`'s HTTP server: the OpenAI API over a deployment's edge site.
// Each completion is one edge session (policy.mode) whose tokens are sent as
// they are emitted; a client that goes away cancels its session, which
// closes its cloud session. See README "ceco serve".
//
//   POST /v1/chat/completions, /v1/completions   (stream true or false)
//   GET  /v1/models, /v1/models/{id}, /health, /metrics

#include <memory>
#include <string>

#include "actors/deployment.hpp"
#include "apps/chat_templates.hpp"
#include "apps/prometheus_metrics.hpp"

namespace ceco::app {

struct serve_options {
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port
  int max_concurrent = 16;       // completions at once; more get 429
  std::string chat_template;     // a built-in name; "" = recognise the model's
  std::string model_id;          // "" = from the model's file name
  int max_connections = 512;     // open at once; past it the longest-waiting one is closed
  int header_timeout_ms = 10'000;  // a request's line and headers, from their first byte
  int body_timeout_ms = 30'000;    // its body, from the end of its headers
  int queue = 64;                // completions waiting beyond max_concurrent; more get 429
  std::string api_key;           // "" = none; else every request needs `Authorization: Bearer KEY`
  bool protect_health = false;   // /health and /metrics behind the key too
  std::string access_log = "-";  // "-" = stderr, "" = none, else a file appended to
  int drain_timeout_s = 10;      // on SIGTERM/SIGINT: how long streams in flight may finish
};

/// Whether `header` (an Authorization header's value) is `Bearer <key>`,
/// compared in time that depends on the key's length only.
bool bearer_matches(const std::string& header, const std::string& key);

/// The chat template `o` names, else the one the model's
/// tokenizer.chat_template is, else plain; `why` says which and how.
chat_format choose_chat_format(const serve_options& o, const tokenizer& vocab, std::string& why);

/// The id /v1/models lists for the model at `path`: its file name without
/// extension, or its folder's name when that is the generic "model".
std::string model_id_of(const std::string& path);

class openai_server {
public:
  openai_server(caf::actor_system& sys, deployment& edge, const settings& s, const site_model& m,
                serve_options o, chat_format chat, std::shared_ptr<edge_metrics> metrics);
  ~openai_server();
  openai_server(const openai_server&) = delete;
  openai_server& operator=(const openai_server&) = delete;

  /// Binds host:port; returns the port (the chosen one for port 0). Throws
  /// config_error when it cannot.
  int bind();
  /// Serves until stop(); blocks the calling thread.
  void run();
  void stop();
  /// Refuses new requests with 503 and waits up to `timeout_s` for the
  /// completions in flight to finish; those still running then are ended
  /// (an error event for a stream). Returns how many were ended so.
  int drain(int timeout_s);
  const std::string& model_id() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace ceco::app
