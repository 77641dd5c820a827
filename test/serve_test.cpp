// ceco serve: the OpenAI request checks, chat templates and streamed text
// in-process; the server itself as a `ceco serve` process driven by a plain
// HTTP client (cpp-httplib): bad requests, limits, a client that goes away,
// streamed == non-streamed, metrics that add up, and a separate `ceco cloud`.

#include "test/support.hpp"
#include "test/ceco_process.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <map>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/chat_templates.hpp"
#include "apps/openai_api.hpp"
#include "apps/openai_server.hpp"
#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"

using namespace ceco;
using namespace ceco::app;
using namespace ceco::test;
using nlohmann::json;

namespace {

int status_of(const std::string& body, bool chat = true) {
  try {
    parse_completion_request(body, chat);
  } catch (const api_error& e) {
    return e.status;
  }
  return 200;
}

std::string param_of(const std::string& body, bool chat = true) {
  try {
    parse_completion_request(body, chat);
  } catch (const api_error& e) {
    return e.param;
  }
  return "accepted";
}

/// The port after the last ':' of the process's next line.
int port_from_line(ceco_process& p) {
  auto l = p.line();
  auto at = l.rfind(':');
  REQUIRE_MESSAGE(at != std::string::npos, "no port in '" << l << "'");
  return std::atoi(l.c_str() + at + 1);
}

/// `ceco serve` on a free loopback port, with the built-in model.
struct server {
  ceco_process proc;
  int port = 0;
  explicit server(const std::string& args) : proc("serve --port 0 " + args) {
    port = port_from_line(proc);
    REQUIRE(port > 0);
    proc.line();  // the model, mode and template line
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
};

struct reply {
  int status = 0;
  json body;
};

reply post(const server& s, const std::string& path, const std::string& body) {
  auto c = s.client();
  auto r = c.Post(path.c_str(), body, "application/json");
  REQUIRE_MESSAGE(r, "no answer from ceco serve to " << path);
  return {r->status, json::parse(r->body, nullptr, false)};
}

/// A streamed request: the parsed `data:` events before [DONE], and whether
/// [DONE] came.
struct stream_reply {
  int status = 0;
  std::vector<json> events;
  bool done = false;
};

stream_reply post_stream(const server& s, const std::string& path, json body) {
  body["stream"] = true;
  auto c = s.client();
  std::string raw;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    raw.append(data, n);
    return true;
  };
  auto r = c.send(req);
  REQUIRE(r);
  stream_reply out;
  out.status = r->status;
  size_t at = 0;
  while ((at = raw.find("data: ", at)) != std::string::npos) {
    auto end = raw.find("\n\n", at);
    REQUIRE(end != std::string::npos);
    auto payload = raw.substr(at + 6, end - at - 6);
    if (payload == "[DONE]")
      out.done = true;
    else
      out.events.push_back(json::parse(payload));
    at = end;
  }
  return out;
}

/// The text of a stream's chunks, joined.
std::string joined(const stream_reply& r, bool chat) {
  std::string text;
  for (auto& e : r.events) {
    if (!e.contains("choices") || e["choices"].empty())
      continue;
    const auto& c = e["choices"][0];
    if (chat && c["delta"].contains("content"))
      text += c["delta"]["content"].get<std::string>();
    if (!chat)
      text += c["text"].get<std::string>();
  }
  return text;
}

/// Prometheus text: sample name with labels -> value.
std::map<std::string, double> scrape(int port, const std::string& path = "/metrics") {
  httplib::Client c("127.0.0.1", port);
  auto r = c.Get(path.c_str());
  REQUIRE(r);
  REQUIRE(r->status == 200);
  std::map<std::string, double> out;
  std::istringstream in(r->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    auto space = line.rfind(' ');
    REQUIRE_MESSAGE(space != std::string::npos, "not a Prometheus sample: " << line);
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

/// Waits up to `seconds` for `metric` at `port` to equal `value`.
bool wait_for_metric(int port, const std::string& metric, double value, double seconds = 10) {
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    auto m = scrape(port);
    if (m.count(metric) && m[metric] == value)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

json chat_body(const std::string& content, int max_tokens) {
  return {{"model", "kjv"},
          {"messages", {{{"role", "user"}, {"content", content}}}},
          {"max_tokens", max_tokens}};
}

json completion_body(const std::string& prompt, int max_tokens) {
  return {{"model", "kjv"}, {"prompt", prompt}, {"max_tokens", max_tokens}};
}

/// A streamed request that reads `chunks` events and then hangs up.
void hang_up_after(const server& s, const json& body, int chunks) {
  auto c = s.client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  auto b = body;
  b["stream"] = true;
  req.body = b.dump();
  req.set_header("Content-Type", "application/json");
  int seen = 0;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    seen += int(std::count(data, data + n, '\n')) / 2;
    return seen < chunks;  // false: the client closes the connection
  };
  c.send(req);
}

} // namespace

TEST_CASE("OpenAI request bodies: each bad field is a 400 naming it") {
  CHECK(status_of("{bad json") == 400);
  CHECK(status_of("[1, 2]") == 400);
  CHECK(param_of(R"({"messages": []})") == "model");
  CHECK(param_of(R"({"model": 7, "messages": []})") == "model");
  CHECK(param_of(R"({"model": "m", "messages": "hi"})") == "messages");
  CHECK(param_of(R"({"model": "m", "messages": []})") == "messages");
  CHECK(param_of(R"({"model": "m", "messages": [{"role": "robot", "content": "x"}]})")
        == "messages[0].role");
  const std::string ok = R"("model": "m", "messages": [{"role": "user", "content": "x"}])";
  CHECK(param_of("{" + ok + "}") == "accepted");
  CHECK(param_of("{" + ok + R"(, "max_tokens": "12"})") == "max_tokens");
  CHECK(param_of("{" + ok + R"(, "max_tokens": 0})") == "max_tokens");
  CHECK(param_of("{" + ok + R"(, "temperature": 3})") == "temperature");
  CHECK(param_of("{" + ok + R"(, "top_p": "1"})") == "top_p");
  CHECK(param_of("{" + ok + R"(, "seed": 1.5})") == "seed");
  CHECK(param_of("{" + ok + R"(, "top_k": 1.5})") == "top_k");
  CHECK(param_of("{" + ok + R"(, "top_k": -2})") == "top_k");
  CHECK(param_of("{" + ok + R"(, "stream": "yes"})") == "stream");
  CHECK(param_of("{" + ok + R"(, "stop": ["a","b","c","d","e"]})") == "stop");
  CHECK(param_of("{" + ok + R"(, "n": 2})") == "n");
  CHECK(param_of(R"({"model": "m", "prompt": 5})", false) == "prompt");
  CHECK(param_of(R"({"model": "m", "prompt": ["a", "b"]})", false) == "prompt");
  CHECK(param_of(R"({"model": "m", "prompt": [1, 2, 3]})", false) == "accepted");
  auto r = parse_completion_request("{" + ok + R"(, "stop": "\n", "max_tokens": 5, "stream": true,
    "stream_options": {"include_usage": true}, "temperature": 0, "seed": 3})", true);
  CHECK(r.stop == std::vector<std::string>{"\n"});
  CHECK(*r.max_tokens == 5);
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(*r.seed == 3);
}

TEST_CASE("chat templates: rendered as each model family expects, recognised from Jinja") {
  std::vector<chat_message> m = {{"system", "Be brief."}, {"user", "Hi"}};
  CHECK(render_chat(chat_format::chatml, m)
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
           "<|im_start|>assistant\n");
  CHECK(render_chat(chat_format::llama2, m) == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
  CHECK(render_chat(chat_format::llama3, m)
        == "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(render_chat(chat_format::zephyr, m)
        == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
  CHECK(render_chat(chat_format::plain, m) == "System: Be brief.\nUser: Hi\nAssistant:");
  std::vector<chat_message> turns = {{"user", "A"}, {"assistant", "B"}, {"user", "C"}};
  CHECK(render_chat(chat_format::llama2, turns) == "[INST] A [/INST] B </s><s>[INST] C [/INST]");

  CHECK(recognise_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role']")
        == chat_format::chatml);
  CHECK(recognise_chat_template("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}")
        == chat_format::llama3);
  CHECK(recognise_chat_template("{{ '<|user|>\n' + message['content'] + eos_token }}{{ '<|assistant|>' }}")
        == chat_format::zephyr);
  CHECK(recognise_chat_template("{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}")
        == chat_format::llama2);
  CHECK_FALSE(recognise_chat_template(""));
  CHECK_FALSE(recognise_chat_template("{{ message['content'] }}"));
  for (auto name : {"chatml", "llama-2", "llama-3", "zephyr", "plain"})
    CHECK(to_string(*parse_chat_format(name)) == std::string(name));
  CHECK_FALSE(parse_chat_format("alpaca"));
}

TEST_CASE("a GGUF's tokenizer.chat_template is kept and chooses the template and its end-of-turn token stops a reply") {
  temp_dir dir;
  gguf_writer g;
  g.set_string("tokenizer.ggml.model", "llama");
  g.set_string_array("tokenizer.ggml.tokens",
                     {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "a", "b", "\xe2\x96\x81"});
  g.set_int32_array("tokenizer.ggml.token_type", {2, 3, 3, 3, 3, 1, 1, 1});
  g.set_string("tokenizer.chat_template",
               "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
               "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
  g.write(dir.file("chatml.gguf"));
  gguf_file f(dir.file("chatml.gguf"));
  auto vocab = tokenizer::from_gguf(f);
  CHECK(vocab.chat_template().find("<|im_start|>") != std::string::npos);
  std::string why;
  CHECK(choose_chat_format({}, vocab, why) == chat_format::chatml);
  CHECK(why.find("recognised") != std::string::npos);
  serve_options chosen;
  chosen.chat_template = "zephyr";
  CHECK(choose_chat_format(chosen, vocab, why) == chat_format::zephyr);
  chosen.chat_template = "alpaca";
  CHECK(error_of([&] { choose_chat_format(chosen, vocab, why); }).find("--chat-template alpaca")
        != std::string::npos);
  CHECK(vocab.encode("<|im_start|>", false, true) == std::vector<int32_t>{3});
  // <|im_end|> is a control token: it decodes to nothing, yet ends the reply.
  text_stream s(vocab, 3, chat_stop_strings(chat_format::chatml));
  CHECK(s.push(5) == "a");
  CHECK(s.push(4).empty());
  CHECK(s.stopped());
  CHECK(s.push(6).empty());
  CHECK(s.sent() == "a");
  // Without a template: plain.
  CHECK(choose_chat_format({}, load_stories("gguf").files.vocab, why) == chat_format::plain);
}

TEST_CASE("streamed text: pieces join to the decoded tokens and a stop string is never sent") {
  const auto& vocab = load_stories("gguf").files.vocab;
  auto tokens = vocab.encode("Once upon a time, there was a little girl named Lily.", false);
  const int32_t prev = vocab.bos();
  {
    text_stream s(vocab, prev, {});
    std::string all;
    for (auto t : tokens)
      all += s.push(t);
    all += s.finish();
    CHECK(all == vocab.decode(tokens, prev));
    CHECK(s.sent() == all);
  }
  {
    // The stop string spans tokens: the text before it goes out, it does not.
    text_stream s(vocab, prev, {"little girl"});
    std::string all;
    for (auto t : tokens) {
      all += s.push(t);
      CHECK(all.find("little") == std::string::npos);
    }
    all += s.finish();
    CHECK(s.stopped());
    CHECK(all == "Once upon a time, there was a ");
  }
  {
    // A tail that only looks like a stop's beginning is sent at the end.
    const std::string stop = "Lily!";
    text_stream s(vocab, prev, {stop});
    std::string all;
    for (auto t : tokens) {
      all += s.push(t);
      // What went out never ends in a beginning of the stop: that is held.
      for (size_t k = 1; k < stop.size(); ++k)
        CHECK_FALSE((all.size() >= k && all.compare(all.size() - k, k, stop, 0, k) == 0));
    }
    all += s.finish();
    CHECK_FALSE(s.stopped());
    CHECK(all == vocab.decode(tokens, prev));
  }
}

TEST_CASE("ceco serve: bad requests get OpenAI errors and the server keeps serving") {
  server s("--local-cloud --set link.latency_ms=0");
  auto served = [&] {
    auto r = post(s, "/v1/completions", completion_body("And God said", 3).dump());
    return r.status == 200 && r.body["usage"]["completion_tokens"].get<int>() > 0;
  };
  auto bad = post(s, "/v1/chat/completions", R"({"model": "kjv", "messages": [)");
  CHECK(bad.status == 400);
  CHECK(bad.body["error"]["type"] == "invalid_request_error");
  CHECK(served());
  auto wrong = post(s, "/v1/chat/completions", R"({"model": "kjv", "messages": "hello"})");
  CHECK(wrong.status == 400);
  CHECK(wrong.body["error"]["param"] == "messages");
  CHECK(served());
  auto body = chat_body("hi", 4);
  body["model"] = "gpt-4";
  auto unknown = post(s, "/v1/chat/completions", body.dump());
  CHECK(unknown.status == 404);
  CHECK(unknown.body["error"]["code"] == "model_not_found");
  CHECK(served());
  auto too_long = post(s, "/v1/completions", completion_body("And God said", 100000).dump());
  CHECK(too_long.status == 400);
  CHECK(too_long.body["error"]["code"] == "context_length_exceeded");
  CHECK(too_long.body["error"]["param"] == "max_tokens");
  CHECK(served());
  auto models = s.client().Get("/v1/models");
  REQUIRE(models);
  CHECK(json::parse(models->body)["data"][0]["id"] == "kjv");
  auto health = s.client().Get("/health");
  REQUIRE(health);
  CHECK(health->status == 200);
  CHECK(json::parse(health->body)["cloud"] == "local");
}

TEST_CASE("ceco serve: streamed chunks join to the non-streamed text, and /metrics adds up") {
  server s("--local-cloud --set link.latency_ms=0");
  int completion_tokens = 0;
  for (bool chat : {true, false}) {
    auto path = chat ? "/v1/chat/completions" : "/v1/completions";
    auto body = chat ? chat_body("And God said", 24) : completion_body("In the beginning", 24);
    auto whole = post(s, path, body.dump());
    REQUIRE(whole.status == 200);
    const auto& choice = whole.body["choices"][0];
    auto text = chat ? choice["message"]["content"].get<std::string>()
                     : choice["text"].get<std::string>();
    CHECK(choice["finish_reason"] == "length");
    CHECK(whole.body["usage"]["completion_tokens"] == 24);
    CHECK(whole.body["ceco"]["mode"] == "collaborative");
    completion_tokens += 24;

    auto streamed = post_stream(s, path, body);
    CHECK(streamed.status == 200);
    CHECK(streamed.done);
    CHECK(streamed.events.size() > 10);  // one chunk per token, not one at the end
    CHECK(joined(streamed, chat) == text);
    const auto& last = streamed.events.back();
    CHECK(last["choices"][0]["finish_reason"] == "length");
    CHECK(last["usage"]["completion_tokens"] == 24);
    const auto& ceco = last["ceco"];
    int per_exit = 0;
    for (auto& [k, v] : ceco["tokens_per_exit"].items())
      per_exit += v.get<int>();
    CHECK(per_exit == 24);
    completion_tokens += 24;
  }
  // The token counters add up to the tokens the responses carried, and the
  // cloud answered exactly the cloud's share.
  auto m = scrape(s.port);
  double tokens = 0;
  for (auto& [name, value] : m)
    if (name.rfind("ceco_tokens_total{", 0) == 0)
      tokens += value;
  CHECK(tokens == completion_tokens);
  CHECK(m["ceco_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"] == 2);
  CHECK(m["ceco_time_to_first_token_seconds_count"] == 4);
  CHECK(m["ceco_cloud_sessions_open"] == 0);
  CHECK(m["ceco_cloud_tokens_answered_total"] == m["ceco_tokens_total{origin=\"cloud\"}"]);
  CHECK(m["ceco_cloud_steps_total"] > 0);
  CHECK(m["ceco_cloud_step_sessions_count"] == m["ceco_cloud_steps_total"]);
  CHECK(m["ceco_cloud_step_sessions_sum"] == m["ceco_cloud_stepped_sessions_total"]);
  CHECK(m["ceco_cloud_step_sessions_bucket{le=\"+Inf\"}"] == m["ceco_cloud_steps_total"]);

  // A stop string ends the response before it.
  auto body = completion_body("In the beginning", 24);
  auto whole = post(s, "/v1/completions", body.dump());
  auto text = whole.body["choices"][0]["text"].get<std::string>();
  auto word = text.substr(text.find(' ', 2), 4);
  body["stop"] = word;
  auto stopped = post(s, "/v1/completions", body.dump());
  CHECK(stopped.body["choices"][0]["finish_reason"] == "stop");
  CHECK(stopped.body["choices"][0]["text"] == text.substr(0, text.find(word)));
  CHECK(wait_for_metric(s.port, "ceco_cancelled_requests_total{reason=\"stop\"}", 1));
  CHECK(wait_for_metric(s.port, "ceco_cloud_sessions_open", 0));
}

TEST_CASE("ceco serve: over the concurrency limit is 429 and a client that hangs up frees its cloud session") {
  // A slow link keeps a response running while the test looks.
  server s("--local-cloud --max-concurrent 1 --queue 0 --set link.latency_ms=20");
  auto long_body = completion_body("And God said", 200);
  std::thread first([&] { hang_up_after(s, long_body, 3); });
  REQUIRE(wait_for_metric(s.port, "ceco_cloud_sessions_open", 1));
  auto refused = post(s, "/v1/completions", completion_body("And", 2).dump());
  CHECK(refused.status == 429);
  CHECK(refused.body["error"]["type"] == "rate_limit_error");
  first.join();
  // The hang-up cancels the session at once: its cloud session closes long
  // before the 200 tokens (4 s at 20 ms) would have ended it.
  CHECK(wait_for_metric(s.port, "ceco_cloud_sessions_open", 0, 2.0));
  CHECK(wait_for_metric(s.port, "ceco_cancelled_requests_total{reason=\"disconnect\"}", 1, 2.0));
  CHECK(wait_for_metric(s.port, "ceco_requests_in_flight", 0, 2.0));
  auto after = post(s, "/v1/completions", completion_body("And", 2).dump());
  CHECK(after.status == 200);
}

TEST_CASE("ceco serve against a ceco cloud process: metrics on both, a hang-up frees the cloud's session, a killed cloud degrades the stream") {
  ceco_process cloud("cloud --set cloud.port=0 --metrics-port 0");
  const int cloud_port = port_from_line(cloud);
  const int metrics_port = port_from_line(cloud);
  REQUIRE(cloud_port > 0);
  REQUIRE(metrics_port > 0);
  server s(fmt::format("--set cloud.port={} --set link.latency_ms=0", cloud_port));
  auto r = post(s, "/v1/completions", completion_body("And God said", 16).dump());
  REQUIRE(r.status == 200);
  auto cm = scrape(metrics_port);
  CHECK(cm["ceco_cloud_tokens_answered_total"] == r.body["ceco"]["tokens_per_exit"]["cloud"]);
  CHECK(cm["ceco_cloud_sessions_open"] == 0);
  CHECK(json::parse(s.client().Get("/health")->body)["cloud"] == "up");

  // A hang-up mid-stream: the cloud's session count drops back.
  server slow(fmt::format("--set cloud.port={} --set link.latency_ms=20", cloud_port));
  std::thread first([&] { hang_up_after(slow, completion_body("And God said", 200), 3); });
  REQUIRE(wait_for_metric(metrics_port, "ceco_cloud_sessions_open", 1));
  first.join();
  CHECK(wait_for_metric(metrics_port, "ceco_cloud_sessions_open", 0, 2.0));

  // The cloud mode has every token from the cloud: without it, 503.
  server cloud_only(fmt::format("--set cloud.port={} --set policy.mode=cloud", cloud_port));

  // The cloud killed mid-stream: the stream goes on on the edge alone and
  // says how many tokens that was.
  stream_reply streamed;
  std::thread reader([&] {
    streamed = post_stream(slow, "/v1/completions", completion_body("And God said", 120));
  });
  REQUIRE(wait_for_metric(metrics_port, "ceco_cloud_sessions_open", 1));
  cloud.kill_now();
  reader.join();
  CHECK(streamed.status == 200);
  CHECK(streamed.done);
  REQUIRE_FALSE(streamed.events.empty());
  const auto& last = streamed.events.back();
  CHECK(last["choices"][0]["finish_reason"] == "length");
  CHECK(last["ceco"]["degraded_tokens"].get<int>() > 0);
  CHECK(scrape(slow.port)["ceco_link_up"] == 0);
  auto health = cloud_only.client().Get("/health");
  REQUIRE(health);
  CHECK(health->status == 503);
  CHECK(json::parse(health->body)["cloud"] == "down");
  auto refused = post(cloud_only, "/v1/completions", completion_body("And", 4).dump());
  CHECK(refused.status == 503);
  CHECK(refused.body["error"]["code"] == "cloud_unavailable");
  // The collaborative server still serves, on the edge alone.
  auto alone = post(slow, "/v1/completions", completion_body("And", 4).dump());
  CHECK(alone.status == 200);
  CHECK(alone.body["ceco"]["degraded_tokens"] == alone.body["usage"]["completion_tokens"]);
  CHECK(alone.body["ceco"]["tokens_per_exit"]["cloud"] == 0);
}

TEST_CASE("ceco serve in exact and speculative modes: only final tokens stream, exact gives the cloud's text") {
  std::string reference;
  {
    server cloud_mode("--local-cloud --set link.latency_ms=0 --set policy.mode=cloud");
    auto r = post(cloud_mode, "/v1/completions", completion_body("And the LORD said", 32).dump());
    REQUIRE(r.status == 200);
    reference = r.body["choices"][0]["text"].get<std::string>();
  }
  for (auto mode : {"exact", "speculative"}) {
    CAPTURE(mode);
    server s(std::string("--local-cloud --set link.latency_ms=2 --set policy.mode=") + mode);
    auto body = completion_body("And the LORD said", 32);
    auto whole = post(s, "/v1/completions", body.dump());
    REQUIRE(whole.status == 200);
    auto text = whole.body["choices"][0]["text"].get<std::string>();
    CHECK(whole.body["ceco"]["mode"] == mode);
    if (std::string(mode) == "exact") {
      CHECK(text == reference);
      CHECK(whole.body["ceco"]["unverified_tokens"] == 0);
    }
    // Rolled-back drafts never reach the client: the stream joins to the text.
    auto streamed = post_stream(s, "/v1/completions", body);
    CHECK(streamed.done);
    CHECK(joined(streamed, false) == text);
    CHECK(streamed.events.back()["ceco"]["rollbacks"].get<int>() >= 0);
    auto m = scrape(s.port);
    CHECK(m["ceco_draft_tokens_total{outcome=\"accepted\"}"] > 0);
  }
}

TEST_CASE("ceco serve honours temperature, top_p, top_k and seed in every mode: a seed reproduces a response") {
  for (auto mode : {"collaborative", "exact"}) {
    CAPTURE(mode);
    server s(std::string("--local-cloud --set link.latency_ms=0 --set policy.mode=") + mode);
    auto text_of = [&](const nlohmann::json& body) {
      auto r = post(s, "/v1/completions", body.dump());
      REQUIRE(r.status == 200);
      return std::pair{r.body["choices"][0]["text"].get<std::string>(), r.body["ceco"]["sampling"]};
    };
    auto greedy_body = completion_body("And the LORD said", 24);
    auto [greedy, greedy_sampling] = text_of(greedy_body);
    CHECK(greedy_sampling == "greedy");  // the server's default: sampling.temperature = 0
    auto sampled_body = greedy_body;
    sampled_body["temperature"] = 1.2;
    sampled_body["top_p"] = 0.95;
    sampled_body["top_k"] = 40;
    sampled_body["seed"] = 11;
    auto [a, a_sampling] = text_of(sampled_body);
    CHECK(a_sampling["seed"] == 11);
    CHECK(a_sampling["top_k"] == 40);
    CHECK(a_sampling["temperature"].get<double>() == doctest::Approx(1.2));
    CHECK(a != greedy);
    CHECK(text_of(sampled_body).first == a);  // the seed reproduces it
    // Streamed, the same seed gives the same text.
    auto streamed = post_stream(s, "/v1/completions", sampled_body);
    CHECK(streamed.done);
    CHECK(joined(streamed, false) == a);
    sampled_body["seed"] = 12;
    CHECK(text_of(sampled_body).first != a);
    // No seed: each response draws its own.
    sampled_body.erase("seed");
    auto [b, b_sampling] = text_of(sampled_body);
    auto [c, c_sampling] = text_of(sampled_body);
    CHECK(b_sampling["seed"] != c_sampling["seed"]);
  }
}

namespace {

/// A plain TCP connection to 127.0.0.1:port (-1 when refused).
int raw_connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_text(int fd, const std::string& text) {
  size_t at = 0;
  while (at < text.size()) {
    auto n = ::send(fd, text.data() + at, text.size() - at, MSG_NOSIGNAL);
    if (n <= 0)
      return false;
    at += size_t(n);
  }
  return true;
}

std::string http_post(const std::string& path, const std::string& body) {
  return fmt::format("POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: {}\r\n\r\n{}",
                     path, body.size(), body);
}

/// Whether the server closed `fd` within `seconds` (EOF or reset).
bool closed_by_server(int fd, double seconds) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, int(seconds * 1000)) <= 0)
    return false;
  char buf[4096];
  for (;;) {
    auto n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN))
      return true;
    if (n < 0)
      return false;
  }
}

/// Resident memory of process `pid`, MiB.
double rss_mib(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stod(line.substr(6)) / 1024.0;
  return -1;
}

/// Seconds a GET of `path` took to answer (status in `status`; 0: none in 5 s).
double timed_get(int port, const std::string& path, int& status) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5, 0);
  c.set_read_timeout(5, 0);
  auto t0 = std::chrono::steady_clock::now();
  auto r = c.Get(path.c_str());
  status = r ? r->status : 0;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

TEST_CASE("request numbers are range-checked and reported as written, deep JSON is refused") {
  auto big = parse_completion_request(R"({"model": "m", "prompt": [4294967297]})", false);
  REQUIRE(big.prompt_tokens.size() == 1);
  CHECK(big.prompt_tokens[0] == 4294967297LL);  // not 1: the server then refuses it by value
  auto message_of = [](const std::string& body, bool chat = false) -> std::string {
    try {
      parse_completion_request(body, chat);
    } catch (const api_error& e) {
      return e.what();
    }
    return "accepted";
  };
  CHECK(message_of(R"({"model": "m", "prompt": "x", "max_tokens": 18446744073709551615})")
          .find("18446744073709551615") != std::string::npos);
  CHECK(param_of(R"({"model": "m", "prompt": "x", "max_tokens": 18446744073709551615})", false)
        == "max_tokens");
  CHECK(message_of(R"({"model": "m", "prompt": [18446744073709551615]})")
          .find("18446744073709551615") != std::string::npos);
  CHECK(*parse_completion_request(R"({"model": "m", "prompt": "x", "max_tokens": 9223372036854775807})",
                                  false).max_tokens == INT64_MAX);
  CHECK(param_of(R"({"model": "m", "prompt": "x", "seed": 18446744073709551615})", false) == "seed");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  CHECK(status_of(R"({"model": "m", "prompt": "x", "extra": )" + deep + "}", false) == 400);
  CHECK(message_of(R"({"model": "m", "prompt": "x", "extra": )" + deep + "}")
          .find("levels deep") != std::string::npos);
  // Nesting a request really uses is accepted.
  CHECK(param_of(R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})")
        == "accepted");
}

TEST_CASE("ceco serve: token ids and max_tokens past their range are refused with the value given") {
  server s("--local-cloud --set link.latency_ms=0");
  auto id = post(s, "/v1/completions", R"({"model": "kjv", "prompt": [1, 4294967297]})");
  CHECK(id.status == 400);
  CHECK(id.body["error"]["param"] == "prompt");
  CHECK(id.body["error"]["message"].get<std::string>().find("4294967297") != std::string::npos);
  for (std::string n : {"9223372036854775807", "18446744073709551615"}) {
    auto r = post(s, "/v1/completions",
                  R"({"model": "kjv", "prompt": "And", "max_tokens": )" + n + "}");
    CHECK(r.status == 400);
    CHECK(r.body["error"]["param"] == "max_tokens");
    CHECK(r.body["error"]["message"].get<std::string>().find(n) != std::string::npos);
  }
}

TEST_CASE("ceco serve: /health answers within 1 s while 200 slow clients are connected, and they are closed at the header timeout") {
  server s("--local-cloud --set link.latency_ms=0");  // the default 10 s header timeout
  std::vector<int> slow;
  for (int i = 0; i < 200; ++i) {
    int fd = raw_connect(s.port);
    REQUIRE(fd >= 0);
    send_text(fd, "POST /v1/completions HTTP/1.1\r\n");
    slow.push_back(fd);
  }
  std::atomic<bool> stop{false};
  std::thread drip([&] {
    // A byte every 2 s from each: never a whole header line.
    while (!stop) {
      for (int fd : slow)
        send_text(fd, "X");
      for (int i = 0; i < 20 && !stop; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  for (int k = 0; k < 3; ++k) {
    int status = 0;
    double t = timed_get(s.port, "/health", status);
    CAPTURE(k);
    CHECK(status == 200);
    CHECK(t < 1.0);
    MESSAGE("/health with 200 slow clients: " << t * 1000 << " ms");
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
  }
  // Each is closed by the 10 s header deadline, long before 8 KiB of headers.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(14);
  std::vector<bool> seen(slow.size(), false);
  int closed = 0;
  while (closed < int(slow.size()) && std::chrono::steady_clock::now() < until) {
    for (size_t i = 0; i < slow.size(); ++i)
      if (!seen[i] && closed_by_server(slow[i], 0.0)) {
        seen[i] = true;
        ++closed;
      }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  stop = true;
  drip.join();
  for (int fd : slow)
    ::close(fd);
  CHECK(closed == 200);
  auto r = post(s, "/v1/completions", completion_body("And", 2).dump());
  CHECK(r.status == 200);
}

TEST_CASE("ceco serve: past --max-connections the longest-waiting connection is closed and new ones are served") {
  server s("--local-cloud --set link.latency_ms=0 --max-connections 20");
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    int fd = raw_connect(s.port);
    REQUIRE(fd >= 0);
    send_text(fd, "GET /health HTTP/1.1\r\n");  // never finished
    idle.push_back(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // The first 20 made room for the next 20.
  int closed = 0;
  for (int i = 0; i < 20; ++i)
    closed += closed_by_server(idle[size_t(i)], 2.0);
  CHECK(closed == 20);
  int status = 0;
  CHECK(timed_get(s.port, "/health", status) < 1.0);
  CHECK(status == 200);
  for (int fd : idle)
    ::close(fd);
}

TEST_CASE("ceco serve: clients that hang up on non-streamed requests free their places at once") {
  server s("--local-cloud --max-concurrent 16 --set link.latency_ms=20");
  std::vector<int> fds;
  for (int i = 0; i < 16; ++i) {
    int fd = raw_connect(s.port);
    REQUIRE(fd >= 0);
    REQUIRE(send_text(fd, http_post("/v1/completions", completion_body("And God said", 200).dump())));
    fds.push_back(fd);
  }
  REQUIRE(wait_for_metric(s.port, "ceco_requests_in_flight", 16));
  for (int fd : fds)
    ::close(fd);
  // 200 tokens at 20 ms each way would take 8 s: the hang-ups cancel them.
  CHECK(wait_for_metric(s.port, "ceco_requests_in_flight", 0, 2.0));
  CHECK(wait_for_metric(s.port, "ceco_cancelled_requests_total{reason=\"disconnect\"}", 16, 2.0));
  auto next = post(s, "/v1/completions", completion_body("And", 2).dump());
  CHECK(next.status == 200);
  CHECK(wait_for_metric(s.port, "ceco_cloud_sessions_open", 0, 2.0));
}

TEST_CASE("ceco serve: --max-concurrent is checked before the prompt is tokenized") {
  server s("--local-cloud --max-concurrent 1 --queue 0 --set link.latency_ms=20");
  int fd = raw_connect(s.port);
  REQUIRE(fd >= 0);
  REQUIRE(send_text(fd, http_post("/v1/completions", completion_body("And God said", 200).dump())));
  REQUIRE(wait_for_metric(s.port, "ceco_requests_in_flight", 1));
  std::string text;
  while (text.size() < 7'000'000)
    text += "And God said, Let there be light: and there was light. ";
  auto t0 = std::chrono::steady_clock::now();
  auto busy = post(s, "/v1/completions", completion_body(text, 4).dump());
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(busy.status == 429);
  CHECK(took < 1.0);
  ::close(fd);
}

TEST_CASE("ceco serve: bounded work per request: a 7 MB prompt is refused fast, deep JSON is refused, memory is given back") {
  server s("--local-cloud --set link.latency_ms=0");
  CHECK(post(s, "/v1/completions", completion_body("And", 2).dump()).status == 200);
  const double rss0 = rss_mib(s.proc.pid);
  std::string text;
  while (text.size() < 7'000'000)
    text += "And God said, Let there be light: and there was light. ";
  for (bool chat : {false, true}) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = chat ? post(s, "/v1/chat/completions", chat_body(text, 4).dump())
                  : post(s, "/v1/completions", completion_body(text, 4).dump());
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CAPTURE(chat);
    CHECK(r.status == 400);
    CHECK(r.body["error"]["code"] == "context_length_exceeded");
    CHECK(took < 1.0);
    MESSAGE("7 MB prompt refused in " << took * 1000 << " ms");
  }
  // Bodies of 8 MB nested as deep as they go, and wide ones of many small
  // values: refused or served, and the memory their parse took comes back.
  const std::string deep = R"({"model": "kjv", "prompt": "x", "e": )" + std::string(3'500'000, '[')
                           + std::string(3'500'000, ']') + "}";
  json wide = completion_body("And", 1);
  wide["e"] = json::array();
  for (int i = 0; i < 400'000; ++i)
    wide["e"].push_back({{"k", i}});
  const auto wide_text = wide.dump();
  for (int i = 0; i < 6; ++i) {
    auto d = post(s, "/v1/completions", deep);
    CHECK(d.status == 400);
    CHECK(d.body["error"]["message"].get<std::string>().find("levels deep") != std::string::npos);
    CHECK(post(s, "/v1/completions", wide_text).status == 200);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the last one's trim, after its reply
  const double rss1 = rss_mib(s.proc.pid);
  MESSAGE("ceco serve RSS before " << rss0 << " MiB, after 2 prompts of 7 MB, 6 deep and 6 wide "
          "bodies " << rss1 << " MiB");
  CHECK(rss1 - rss0 < 48.0);
}

// ---- a server people can put in front of users (issue 26, item 3) ----

TEST_CASE("logprobs and top_logprobs are refused naming the field, n > 1 too, unknown fields are ignored") {
  const std::string chat = R"("model": "m", "messages": [{"role": "user", "content": "hi"}])";
  const std::string prompt = R"("model": "m", "prompt": "hi")";
  CHECK(param_of("{" + chat + R"(, "logprobs": true})") == "logprobs");
  CHECK(status_of("{" + chat + R"(, "logprobs": true})") == 400);
  CHECK(param_of("{" + chat + R"(, "logprobs": true, "top_logprobs": 3})") == "logprobs");
  CHECK(param_of("{" + chat + R"(, "top_logprobs": 3})") == "top_logprobs");
  CHECK(param_of("{" + chat + R"(, "logprobs": "yes"})") == "logprobs");
  CHECK(param_of("{" + prompt + R"(, "logprobs": 0})", false) == "logprobs");
  CHECK(param_of("{" + prompt + R"(, "logprobs": 5})", false) == "logprobs");
  try {
    parse_completion_request("{" + chat + R"(, "top_logprobs": 3})", true);
    FAIL("top_logprobs accepted");
  } catch (const api_error& e) {
    CHECK(std::string(e.what()).find("'top_logprobs' is 3") != std::string::npos);
  }
  // Asked not to give them, or nothing asked: accepted.
  CHECK(param_of("{" + chat + R"(, "logprobs": false, "top_logprobs": 0})") == "accepted");
  CHECK(param_of("{" + chat + R"(, "logprobs": null})") == "accepted");
  CHECK(param_of("{" + chat + R"(, "n": 3})") == "n");
  CHECK(param_of("{" + chat + R"(, "n": 1})") == "accepted");
  CHECK(param_of("{" + chat + R"(, "user": "u-1", "service_tier": "auto", "frequency_penalty": 0.5,
                   "something_new": {"a": [1]}})") == "accepted");
}

TEST_CASE("an Authorization header is checked against the key, whole") {
  CHECK(bearer_matches("Bearer k3y-1", "k3y-1"));
  CHECK_FALSE(bearer_matches("Bearer k3y-2", "k3y-1"));
  CHECK_FALSE(bearer_matches("Bearer k3y-", "k3y-1"));
  CHECK_FALSE(bearer_matches("Bearer k3y-11", "k3y-1"));
  CHECK_FALSE(bearer_matches("Basic k3y-1", "k3y-1"));
  CHECK_FALSE(bearer_matches("k3y-1", "k3y-1"));
  CHECK_FALSE(bearer_matches("", "k3y-1"));
  CHECK_FALSE(bearer_matches("Bearer ", ""));
}

namespace {

reply request(const server& s, const std::string& method, const std::string& path,
              const std::string& key, const std::string& body = {}) {
  auto c = s.client();
  httplib::Headers h;
  if (!key.empty())
    h.emplace("Authorization", "Bearer " + key);
  auto r = method == "GET" ? c.Get(path.c_str(), h)
                           : c.Post(path.c_str(), h, body, "application/json");
  REQUIRE_MESSAGE(r, "no answer from ceco serve to " << path);
  return {r->status, json::parse(r->body, nullptr, false)};
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

} // namespace

TEST_CASE("ceco serve --api-key: without the key 401 in OpenAI's format, /health and /metrics open unless --protect-health") {
  const auto body = completion_body("And God said", 3).dump();
  {
    server s("--local-cloud --api-key k3y-1 --set link.latency_ms=0");
    auto none = request(s, "POST", "/v1/completions", "", body);
    CHECK(none.status == 401);
    CHECK(none.body["error"]["type"] == "invalid_request_error");
    CHECK(none.body["error"]["code"] == "invalid_api_key");
    CHECK(none.body["error"]["message"].get<std::string>().find("API key") != std::string::npos);
    CHECK(request(s, "POST", "/v1/completions", "k3y-2", body).status == 401);
    CHECK(request(s, "POST", "/v1/chat/completions", "k3y", chat_body("hi", 2).dump()).status
          == 401);
    CHECK(request(s, "GET", "/v1/models", "", "").status == 401);
    CHECK(request(s, "GET", "/no/such/path", "", "").status == 401);
    auto ok = request(s, "POST", "/v1/completions", "k3y-1", body);
    CHECK(ok.status == 200);
    CHECK(ok.body["usage"]["completion_tokens"] == 3);
    CHECK(request(s, "GET", "/v1/models", "k3y-1", "").status == 200);
    CHECK(request(s, "GET", "/health", "", "").status == 200);
    CHECK(request(s, "GET", "/metrics", "", "").status == 200);
    auto m = scrape(s.port);
    CHECK(m["ceco_http_requests_total{endpoint=\"/v1/completions\",status=\"401\"}"] == 2);
  }
  {
    server s("--local-cloud --api-key k3y-1 --protect-health --set link.latency_ms=0");
    CHECK(request(s, "GET", "/health", "", "").status == 401);
    CHECK(request(s, "GET", "/metrics", "", "").status == 401);
    CHECK(request(s, "GET", "/health", "k3y-1", "").status == 200);
    CHECK(request(s, "GET", "/metrics", "k3y-1", "").status == 200);
  }
  {
    temp_dir dir;
    const auto file = dir.file("key");
    std::ofstream(file) << "from-a-file\n";
    server s("--local-cloud --api-key-file " + file + " --set link.latency_ms=0");
    CHECK(request(s, "POST", "/v1/completions", "", body).status == 401);
    CHECK(request(s, "POST", "/v1/completions", "from-a-file", body).status == 200);
  }
  {
    ::setenv("CECO_API_KEY", "from-the-env", 1);
    server s("--local-cloud --set link.latency_ms=0");
    ::unsetenv("CECO_API_KEY");
    CHECK(request(s, "POST", "/v1/completions", "", body).status == 401);
    CHECK(request(s, "POST", "/v1/completions", "from-the-env", body).status == 200);
  }
  {
    // Without a key every request is served, as before.
    server s("--local-cloud --set link.latency_ms=0");
    CHECK(request(s, "POST", "/v1/completions", "", body).status == 200);
  }
}

TEST_CASE("ceco serve: an empty or unreadable key file is an error naming the flag") {
  temp_dir dir;
  std::ofstream(dir.file("empty")) << "\n";
  auto empty = run_ceco("serve --local-cloud --port 0 --api-key-file " + dir.file("empty"));
  CHECK(empty.status == 1);
  CHECK(empty.out.find("--api-key-file") != std::string::npos);
  CHECK(empty.out.find("empty") != std::string::npos);
  auto missing = run_ceco("serve --local-cloud --port 0 --api-key-file " + dir.file("none"));
  CHECK(missing.status == 1);
  CHECK(missing.out.find("--api-key-file") != std::string::npos);
  auto both = run_ceco("serve --local-cloud --port 0 --api-key a --api-key-file " + dir.file("empty"));
  CHECK(both.status == 1);
}

TEST_CASE("ceco serve: past --max-concurrent requests wait in the queue, 429 with Retry-After only when it is full, a queued client that hangs up leaves it") {
  server s("--local-cloud --max-concurrent 1 --queue 2 --set link.latency_ms=20");
  // 40 tokens at 20 ms each way: about 1.6 s each.
  const auto body = completion_body("And God said", 40).dump();
  std::vector<int> statuses(3, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&, i] {
      statuses[i] = post(s, "/v1/completions", body).status;
    });
    if (i == 0)
      REQUIRE(wait_for_metric(s.port, "ceco_requests_in_flight", 1));
    else
      REQUIRE(wait_for_metric(s.port, "ceco_requests_queued", i));
  }
  CHECK(scrape(s.port)["ceco_requests_in_flight"] == 1);
  auto c = s.client();
  auto full = c.Post("/v1/completions", body, "application/json");
  REQUIRE(full);
  CHECK(full->status == 429);
  CHECK(full->get_header_value("Retry-After") == "1");
  auto err = json::parse(full->body);
  CHECK(err["error"]["type"] == "rate_limit_error");
  CHECK(err["error"]["message"].get<std::string>().find("--queue 2") != std::string::npos);
  for (auto& t : clients)
    t.join();
  CHECK(statuses == std::vector<int>{200, 200, 200});  // the queued ones were served, in turn
  CHECK(scrape(s.port)["ceco_requests_queued"] == 0);

  // A queued request whose client hangs up leaves the queue at once.
  int busy = raw_connect(s.port);
  REQUIRE(busy >= 0);
  REQUIRE(send_text(busy, http_post("/v1/completions", completion_body("And God said", 200).dump())));
  REQUIRE(wait_for_metric(s.port, "ceco_requests_in_flight", 1));
  int queued = raw_connect(s.port);
  REQUIRE(queued >= 0);
  REQUIRE(send_text(queued, http_post("/v1/completions", body)));
  REQUIRE(wait_for_metric(s.port, "ceco_requests_queued", 1));
  ::close(queued);
  CHECK(wait_for_metric(s.port, "ceco_requests_queued", 0, 1.0));
  CHECK(scrape(s.port)["ceco_requests_in_flight"] == 1);  // the running one goes on
  ::close(busy);
  CHECK(wait_for_metric(s.port, "ceco_requests_in_flight", 0, 2.0));
}

TEST_CASE("ceco serve --access-log: one line per request with method, path, status, tokens, ms, mode and client") {
  temp_dir dir;
  const auto log = dir.file("access.log");
  {
    server s("--local-cloud --api-key k3y-1 --access-log " + log + " --set link.latency_ms=0");
    CHECK(request(s, "POST", "/v1/completions", "k3y-1", completion_body("And God said", 5).dump())
            .status == 200);
    auto streamed = completion_body("In the beginning", 4);
    streamed["stream"] = true;
    CHECK(request(s, "POST", "/v1/completions", "k3y-1", streamed.dump()).status == 200);
    CHECK(request(s, "POST", "/v1/chat/completions", "nope", chat_body("hi", 2).dump()).status
          == 401);
    CHECK(request(s, "GET", "/health", "", "").status == 200);
    // A line is written once its response is out: wait for the last one.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    auto lines_in = [&] {
      auto text = read_file(log);
      return std::count(text.begin(), text.end(), '\n');
    };
    while (lines_in() < 4 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  INFO(read_file(log));
  std::istringstream in(read_file(log));
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    lines.push_back(l);
  REQUIRE(lines.size() == 4);
  // A line is written when its response is out, so a stream's may come
  // after the next request's: each is found by its path and status.
  auto line_with = [&](const std::string& what) {
    for (auto& l : lines)
      if (l.find(what) != std::string::npos)
        return l;
    return std::string();
  };
  auto has = [](const std::string& l, const std::string& what) {
    return l.find(what) != std::string::npos;
  };
  auto plain = line_with("prompt_tokens=4 ");
  CHECK(has(plain, "method=POST path=/v1/completions status=200 prompt_tokens=4 "
                   "completion_tokens=5 "));
  CHECK(has(plain, " mode=collaborative"));
  CHECK(has(plain, "client=127.0.0.1:"));
  CHECK(has(plain, " ms="));
  auto streamed_line = line_with("completion_tokens=4 ");
  CHECK(has(streamed_line, "method=POST path=/v1/completions status=200 "));
  CHECK(has(line_with("status=401"), "method=POST path=/v1/chat/completions status=401 "
                                      "prompt_tokens=- completion_tokens=- "));
  auto health = line_with("path=/health");
  CHECK(has(health, "method=GET path=/health status=200 "));
  CHECK(has(health, "mode=-"));
}

TEST_CASE("ceco serve on SIGTERM finishes the stream in flight, refuses new requests with 503, and exits 0") {
  server s("--local-cloud --set link.latency_ms=20");
  // About 2.4 s of tokens, streamed.
  stream_reply streamed;
  std::thread client([&] {
    streamed = post_stream(s, "/v1/completions", completion_body("And God said", 60));
  });
  REQUIRE(wait_for_metric(s.port, "ceco_requests_in_flight", 1));
  s.proc.signal(SIGTERM);
  CHECK(s.proc.line().find("SIGTERM received") != std::string::npos);
  auto refused = post(s, "/v1/completions", completion_body("And", 2).dump());
  CHECK(refused.status == 503);
  CHECK(refused.body["error"]["code"] == "shutting_down");
  client.join();
  CHECK(streamed.status == 200);
  CHECK(streamed.done);
  REQUIRE_FALSE(streamed.events.empty());
  CHECK(streamed.events.back()["usage"]["completion_tokens"] == 60);
  CHECK(streamed.events.back()["choices"][0]["finish_reason"] == "length");
  int status = -1;
  REQUIRE(::waitpid(s.proc.pid, &status, 0) == s.proc.pid);
  s.proc.pid = -1;
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("ceco serve: a stream past --drain-timeout-s is ended with an error event, and the server exits 0") {
  server s("--local-cloud --drain-timeout-s 1 --set link.latency_ms=20");
  stream_reply streamed;
  std::thread client([&] {
    streamed = post_stream(s, "/v1/completions", completion_body("And God said", 200));
  });
  REQUIRE(wait_for_metric(s.port, "ceco_requests_in_flight", 1));
  const auto t0 = std::chrono::steady_clock::now();
  s.proc.signal(SIGTERM);
  client.join();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(took < 4.0);  // 200 tokens would take 8 s
  REQUIRE_FALSE(streamed.events.empty());
  CHECK(streamed.events.back()["error"]["code"] == "shutting_down");
  int status = -1;
  REQUIRE(::waitpid(s.proc.pid, &status, 0) == s.proc.pid);
  s.proc.pid = -1;
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("chat templates of other families are not taken for a built-in one") {
  // Phi-3: zephyr's role markers, but <|end|> ends a turn.
  CHECK_FALSE(recognise_chat_template(
    "{% for message in messages %}{% if message['role'] == 'user' %}{{'<|user|>\n' + "
    "message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{{ '<|assistant|>\n' }}"));
  // Gemma.
  CHECK_FALSE(recognise_chat_template(
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"));
  // Qwen2 and SmolLM2 are chatml, TinyLlama is zephyr, Mistral's [INST] is llama-2's.
  CHECK(recognise_chat_template("{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                                "'<|im_end|>' + '\n'}}") == chat_format::chatml);
  CHECK(recognise_chat_template("{% if message['role'] == 'user' %}{{ '<|user|>\n' + "
                                "message['content'] + eos_token }}{% elif message['role'] == "
                                "'assistant' %}{{ '<|assistant|>\n'  + message['content'] + "
                                "eos_token }}{% endif %}") == chat_format::zephyr);
  CHECK(recognise_chat_template("{{ '[INST] ' + message['content'] + ' [/INST]' }}{{ "
                                "message['content'] + eos_token}}") == chat_format::llama2);
}

TEST_CASE("ceco serve --help explains every flag of the API key, the queue, the access log and the shutdown") {
  auto help = run_ceco("serve --help");
  REQUIRE(help.status == 0);
  for (const char* flag : {"--api-key ", "--api-key-file", "--protect-health", "--queue",
                           "--access-log", "--drain-timeout-s", "--max-concurrent"})
    CHECK_MESSAGE(help.out.find(flag) != std::string::npos, flag);
  CHECK(help.out.find("Authorization: Bearer KEY") != std::string::npos);
  CHECK(help.out.find("Retry-After") != std::string::npos);
  CHECK(help.out.find("503") != std::string::npos);
  auto chat_help = run_ceco("chat --help");
  REQUIRE(chat_help.status == 0);
  for (const char* flag : {"--local-cloud", "--mode", "--chat-template", "--system",
                           "--max-tokens", "--quiet"})
    CHECK_MESSAGE(chat_help.out.find(flag) != std::string::npos, flag);
}

TEST_CASE("ceco serve: 256 concurrent completions through one serve and one link to a ceco cloud all answer 200") {
  ceco_process cloud("cloud --set cloud.port=0 --metrics-port 0");
  const int cloud_port = port_from_line(cloud);
  const int metrics_port = port_from_line(cloud);
  REQUIRE(cloud_port > 0);
  // At most 64 in flight (the cloud's sessions per connection), the rest queued.
  server s(fmt::format("--set cloud.port={} --set policy.mode=cloud --set link.latency_ms=0 "
                       "--max-concurrent 64 --queue 256",
                       cloud_port));
  const int n = 256;
  std::vector<int> status(n, 0);
  std::vector<std::thread> clients;
  const auto body = completion_body("And God said", 8).dump();
  for (int i = 0; i < n; ++i)
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", s.port);
      c.set_read_timeout(120, 0);
      c.set_connection_timeout(30, 0);
      if (auto r = c.Post("/v1/completions", body, "application/json"))
        status[size_t(i)] = r->status;
    });
  for (auto& t : clients)
    t.join();
  int ok = 0;
  for (int st : status)
    ok += st == 200;
  CHECK(ok == n);
  CHECK(wait_for_metric(metrics_port, "ceco_cloud_sessions_open", 0, 5.0));
}

TEST_CASE("ceco serve in cloud mode against a cloud whose sessions expire fast: every request 200, none left held") {
  // Generations (profile time) outlive session.ttl_s, and one connection may
  // hold 4 sessions: 24 requests in a row pass that cap six times over.
  ceco_process cloud("cloud --set cloud.port=0 --metrics-port 0 --set session.ttl_s=0.2 "
                     "--set session.max_sessions_per_connection=4 --set compute.mode=profile "
                     "--set compute.profile=paper-a100");
  const int cloud_port = port_from_line(cloud);
  const int metrics_port = port_from_line(cloud);
  REQUIRE(cloud_port > 0);
  server s(fmt::format("--set cloud.port={} --set policy.mode=cloud --set link.latency_ms=0",
                       cloud_port));
  int ok = 0;
  for (int i = 0; i < 24; ++i) {
    auto r = post(s, "/v1/completions", completion_body("And God said", 8).dump());
    CAPTURE(r.body.dump());
    ok += r.status == 200;
  }
  CHECK(ok == 24);
  CHECK(wait_for_metric(metrics_port, "ceco_cloud_sessions_open", 0, 5.0));
}
