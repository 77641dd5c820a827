#pragma once

// The OpenAI API as `ceco serve` speaks it: request bodies checked into a
// completion_request, the error object with its HTTP status, the response
// and stream-chunk objects, and the text a response streams as its tokens
// come (whole UTF-8 characters, stop strings cut and never half-sent).

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/chat_templates.hpp"
#include "model/tokenizer.hpp"

namespace ceco::app {

/// Request bodies larger than this are refused (413) before they are parsed.
constexpr size_t max_request_bytes = 8u << 20;
/// JSON nested deeper than this is refused while it is parsed: a request
/// nests 4 levels (messages[i].content[k].text).
constexpr int max_request_depth = 32;

/// An OpenAI error object and the HTTP status that carries it.
struct api_error : std::runtime_error {
  api_error(int status, std::string type, const std::string& message, std::string param = {},
            std::string code = {})
    : std::runtime_error(message), status(status), type(std::move(type)),
      param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type;   // invalid_request_error, not_found_error, rate_limit_error, server_error
  std::string param;  // the field at fault, if any
  std::string code;   // a machine-readable reason, if any
};

/// {"error": {"message", "type", "param", "code"}}.
nlohmann::json error_json(const api_error& e);

/// 400 invalid_request_error naming `param`.
api_error bad_request(const std::string& message, const std::string& param = {},
                      const std::string& code = {});

struct completion_request {
  bool chat = false;                  // /v1/chat/completions, else /v1/completions
  std::string model;
  std::vector<chat_message> messages;         // chat
  std::optional<std::string> prompt;          // completions: text
  std::vector<int64_t> prompt_tokens;         // completions: token ids given as such (any
                                              // int64: checked against the vocabulary later)
  std::optional<int64_t> max_tokens;          // unset: up to the end of the context
  // Sampling; each unset one is the server's own (sampling.*: greedy by default).
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;               // an extension, as llama.cpp and vLLM take it
  std::optional<int64_t> seed;                // unset: a new seed per response
  std::vector<std::string> stop;              // at most 4
  bool stream = false;
  bool include_usage = false;                 // stream_options.include_usage
};

/// Parses and checks a request body; throws api_error (400) naming the field,
/// the expected and the actual type or value.
completion_request parse_completion_request(const std::string& body, bool chat);

/// What a finished response is made of, for the final object or chunk.
struct completion_result {
  std::string id;
  int64_t created = 0;
  std::string model;
  std::string text;
  std::string finish_reason;  // stop | length
  int prompt_tokens = 0;
  int completion_tokens = 0;
  nlohmann::json ceco;        // ceco's own figures of the response
};

nlohmann::json usage_json(const completion_result& r);
/// chat.completion or text_completion.
nlohmann::json completion_json(bool chat, const completion_result& r);
/// One chat.completion.chunk / text_completion chunk carrying `text`; the
/// first chat chunk also names the role; `finish_reason` only on the last.
nlohmann::json chunk_json(bool chat, const completion_result& r, const std::string& text,
                          bool first, const std::optional<std::string>& finish_reason);

/// The text of a response as its tokens come: each push returns what may
/// be sent now. Held back: a UTF-8 character not yet complete and any tail
/// that may begin a stop string. A stop string (in the text, or a special
/// token whose text it is) ends the response; neither it nor anything after
/// it is sent.
class text_stream {
public:
  /// `prev`: the last prompt token (decoding depends on what precedes).
  text_stream(const tokenizer& vocab, int32_t prev, std::vector<std::string> stop);
  std::string push(int32_t token);
  /// The held-back rest once no token follows ("" after a stop).
  std::string finish();
  bool stopped() const { return stopped_; }
  /// Every byte sent so far.
  std::string sent() const { return text_.substr(0, sent_); }

private:
  const tokenizer& vocab_;
  int32_t prev_;
  std::vector<std::string> stop_;
  std::string text_;
  size_t sent_ = 0;
  bool stopped_ = false;
};

} // namespace ceco::app
