#include "apps/openai_api.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace ceco::app {

using nlohmann::json;

namespace {

const char* type_of(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "another type";
  }
}

/// An integer field's value as an int64, or a 400 naming the field and the
/// value as written when it is past int64 (2^64 - 1 is not -1).
int64_t integer_of(const json& v, const std::string& name) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    throw bad_request(fmt::format("'{}' is {}, past the largest integer accepted ({})", name,
                                  v.dump(), INT64_MAX),
                      name);
  return v.get<int64_t>();
}

api_error wrong_type(const std::string& field, const char* expected, const json& v) {
  return bad_request(fmt::format("'{}' must be {}, got {}", field, expected, type_of(v)), field);
}

/// The field `name` of `body` when present and not null.
const json* field(const json& body, const char* name) {
  auto i = body.find(name);
  return i == body.end() || i->is_null() ? nullptr : &*i;
}

std::optional<double> number_in(const json& body, const char* name, double lo, double hi) {
  const json* v = field(body, name);
  if (!v)
    return std::nullopt;
  if (!v->is_number())
    throw wrong_type(name, "a number", *v);
  double x = v->get<double>();
  if (x < lo || x > hi)
    throw bad_request(fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, x), name);
  return x;
}

std::string message_content(const json& content, size_t i) {
  const auto name = fmt::format("messages[{}].content", i);
  if (content.is_null())
    return {};
  if (content.is_string())
    return content.get<std::string>();
  if (!content.is_array())
    throw wrong_type(name, "a string or an array of text parts", content);
  std::string out;
  for (size_t k = 0; k < content.size(); ++k) {
    const auto& part = content[k];
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text")
        || !part["text"].is_string())
      throw bad_request(fmt::format("{}[{}] must be {{\"type\": \"text\", \"text\": string}}; "
                                    "ceco serves text only",
                                    name, k),
                        name);
    out += part["text"].get<std::string>();
  }
  return out;
}

std::vector<chat_message> parse_messages(const json& body) {
  const json* v = field(body, "messages");
  if (!v)
    throw bad_request("'messages' is required", "messages");
  if (!v->is_array())
    throw wrong_type("messages", "an array", *v);
  if (v->empty())
    throw bad_request("'messages' must hold at least one message", "messages");
  std::vector<chat_message> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const auto& m = (*v)[i];
    if (!m.is_object())
      throw wrong_type(fmt::format("messages[{}]", i), "an object", m);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      throw bad_request(fmt::format("messages[{}].role must be a string", i),
                        fmt::format("messages[{}].role", i));
    auto r = role->get<std::string>();
    if (r == "developer")
      r = "system";
    if (r != "system" && r != "user" && r != "assistant")
      throw bad_request(fmt::format("messages[{}].role is '{}'; expected system, developer, user "
                                    "or assistant",
                                    i, r),
                        fmt::format("messages[{}].role", i));
    out.push_back({r, message_content(m.contains("content") ? m["content"] : json(), i)});
  }
  return out;
}

void parse_prompt(const json& body, completion_request& r) {
  const json* v = field(body, "prompt");
  if (!v)
    throw bad_request("'prompt' is required", "prompt");
  if (v->is_string()) {
    r.prompt = v->get<std::string>();
    return;
  }
  if (!v->is_array() || v->empty())
    throw wrong_type("prompt", "a string, an array of one string or an array of token ids", *v);
  if ((*v)[0].is_string()) {
    if (v->size() != 1)
      throw bad_request(fmt::format("'prompt' holds {} prompts; ceco serves one per request",
                                    v->size()),
                        "prompt");
    r.prompt = (*v)[0].get<std::string>();
    return;
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const auto& t = (*v)[i];
    const auto name = fmt::format("prompt[{}]", i);
    if (!t.is_number_integer())
      throw wrong_type(name, "a token id (an integer)", t);
    r.prompt_tokens.push_back(integer_of(t, name));
  }
}

/// Whether the JSON text nests arrays and objects deeper than `limit`: one
/// pass over the bytes, before any value is built (nlohmann's parser with a
/// callback rescans an array at each object's end, quadratic in its size).
bool nesting_exceeds(const std::string& text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit)
        return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

size_t utf8_incomplete_tail(const std::string& s) {
  // Bytes at the end that start a character not yet complete.
  for (size_t back = 1; back <= std::min<size_t>(3, s.size()); ++back) {
    auto c = uint8_t(s[s.size() - back]);
    if ((c & 0xC0) == 0x80)
      continue;  // a continuation byte: look further back
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

} // namespace

api_error bad_request(const std::string& message, const std::string& param,
                      const std::string& code) {
  return api_error(400, "invalid_request_error", message, param, code);
}

json error_json(const api_error& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json() : json(e.param)},
            {"code", e.code.empty() ? json() : json(e.code)}}}};
}

completion_request parse_completion_request(const std::string& body, bool chat) {
  if (body.size() > max_request_bytes)
    throw api_error(413, "invalid_request_error",
                    fmt::format("the request body has {} bytes, at most {} are accepted",
                                body.size(), max_request_bytes));
  if (nesting_exceeds(body, max_request_depth))
    throw bad_request(fmt::format("the request body nests JSON more than {} levels deep",
                                  max_request_depth));
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded())
    throw bad_request("the request body is not valid JSON");
  if (!j.is_object())
    throw bad_request(fmt::format("the request body must be a JSON object, got {}", type_of(j)));
  completion_request r;
  r.chat = chat;
  const json* model = field(j, "model");
  if (!model)
    throw bad_request("'model' is required", "model");
  if (!model->is_string())
    throw wrong_type("model", "a string", *model);
  r.model = model->get<std::string>();
  if (chat)
    r.messages = parse_messages(j);
  else
    parse_prompt(j, r);
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (const json* v = field(j, name)) {
      if (!v->is_number_integer())
        throw wrong_type(name, "an integer", *v);
      auto n = integer_of(*v, name);
      if (n < 1)
        throw bad_request(fmt::format("'{}' must be at least 1, got {}", name, n), name);
      r.max_tokens = n;
    }
  }
  r.temperature = number_in(j, "temperature", 0.0, 2.0);
  r.top_p = number_in(j, "top_p", 0.0, 1.0);
  if (const json* v = field(j, "top_k")) {  // not OpenAI's; llama.cpp's and vLLM's
    if (!v->is_number_integer())
      throw wrong_type("top_k", "an integer", *v);
    const auto k = integer_of(*v, "top_k");
    if (k < -1)
      throw bad_request(fmt::format("'top_k' must be -1 or 0 (no limit) or a count, got {}", k),
                        "top_k");
    r.top_k = k;
  }
  if (const json* v = field(j, "seed")) {
    if (!v->is_number_integer())
      throw wrong_type("seed", "an integer", *v);
    r.seed = integer_of(*v, "seed");
  }
  if (const json* v = field(j, "n")) {
    if (!v->is_number_integer())
      throw wrong_type("n", "an integer", *v);
    if (integer_of(*v, "n") != 1)
      throw bad_request("'n' must be 1: ceco answers one choice per request", "n");
  }
  // Log probabilities: the exits and the cloud send a token alone, never
  // its probability or the ones beside it, so a request for them is refused
  // rather than answered with a null.
  const char* no_logprobs = "ceco serve cannot return log probabilities: a token comes from an "
                            "exit head or the cloud without its probability";
  if (const json* v = field(j, "logprobs")) {
    if (chat) {
      if (!v->is_boolean())
        throw wrong_type("logprobs", "a boolean", *v);
      if (v->get<bool>())
        throw bad_request(fmt::format("'logprobs' is true; {}", no_logprobs), "logprobs");
    } else {
      if (!v->is_number_integer())
        throw wrong_type("logprobs", "an integer", *v);
      throw bad_request(fmt::format("'logprobs' is {}; {}", v->dump(), no_logprobs), "logprobs");
    }
  }
  if (const json* v = field(j, "top_logprobs")) {
    if (!v->is_number_integer())
      throw wrong_type("top_logprobs", "an integer", *v);
    if (integer_of(*v, "top_logprobs") != 0)
      throw bad_request(fmt::format("'top_logprobs' is {}; {}", v->dump(), no_logprobs),
                        "top_logprobs");
  }
  if (const json* v = field(j, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 4)
        throw bad_request(fmt::format("'stop' holds {} strings, at most 4 are allowed", v->size()),
                          "stop");
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string())
          throw wrong_type(fmt::format("stop[{}]", i), "a string", (*v)[i]);
        r.stop.push_back((*v)[i].get<std::string>());
      }
    } else {
      throw wrong_type("stop", "a string or an array of strings", *v);
    }
    r.stop.erase(std::remove(r.stop.begin(), r.stop.end(), std::string()), r.stop.end());
  }
  if (const json* v = field(j, "stream")) {
    if (!v->is_boolean())
      throw wrong_type("stream", "a boolean", *v);
    r.stream = v->get<bool>();
  }
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object())
      throw wrong_type("stream_options", "an object", *v);
    if (const json* u = field(*v, "include_usage")) {
      if (!u->is_boolean())
        throw wrong_type("stream_options.include_usage", "a boolean", *u);
      r.include_usage = u->get<bool>();
    }
  }
  return r;
}

json usage_json(const completion_result& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

json completion_json(bool chat, const completion_result& r) {
  json choice = {{"index", 0}, {"finish_reason", r.finish_reason}, {"logprobs", nullptr}};
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", r.text}};
  else
    choice["text"] = r.text;
  return {{"id", r.id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", r.created},
          {"model", r.model},
          {"choices", json::array({choice})},
          {"usage", usage_json(r)},
          {"ceco", r.ceco}};
}

json chunk_json(bool chat, const completion_result& r, const std::string& text, bool first,
                const std::optional<std::string>& finish_reason) {
  json choice = {{"index", 0},
                 {"finish_reason", finish_reason ? json(*finish_reason) : json()},
                 {"logprobs", nullptr}};
  if (chat) {
    json delta = json::object();
    if (first)
      delta["role"] = "assistant";
    if (!text.empty() || !finish_reason)
      delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  return {{"id", r.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", r.created},
          {"model", r.model},
          {"choices", json::array({choice})}};
}

text_stream::text_stream(const tokenizer& vocab, int32_t prev, std::vector<std::string> stop)
  : vocab_(vocab), prev_(prev), stop_(std::move(stop)) {}

std::string text_stream::push(int32_t token) {
  if (stopped_)
    return {};
  const auto kind = vocab_.kind(token);
  if (kind == token_kind::control || kind == token_kind::user_defined) {
    // A special token that is a stop string ends the turn (<|im_end|>, ...).
    const auto special = vocab_.token_text(token);
    if (std::find(stop_.begin(), stop_.end(), special) != stop_.end()) {
      stopped_ = true;
      text_.resize(sent_);  // held-back text could only have begun a stop
      return {};
    }
  }
  text_ += vocab_.decode_piece(prev_, token);
  prev_ = token;
  // The earliest stop string in what is not sent yet.
  size_t cut = std::string::npos;
  for (auto& s : stop_) {
    auto at = text_.find(s, sent_);
    if (at != std::string::npos)
      cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    text_.resize(cut);
    auto out = text_.substr(sent_);
    sent_ = text_.size();
    return out;
  }
  // Hold back the longest tail that begins a stop string.
  size_t hold = 0;
  for (auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, text_.size() - sent_); k > hold; --k)
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  size_t end = text_.size() - hold;
  end -= utf8_incomplete_tail(text_.substr(sent_, end - sent_));
  auto out = text_.substr(sent_, end - sent_);
  sent_ = end;
  return out;
}

std::string text_stream::finish() {
  if (stopped_)
    return {};
  auto out = text_.substr(sent_);
  sent_ = text_.size();
  return out;
}

} // namespace ceco::app
