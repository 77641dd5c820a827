#include "config/settings.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include "model/sampler.hpp"

namespace ceco {

namespace {

using setter = std::function<void(settings&, const toml::node&, const std::string& where)>;
using getter = std::function<std::string(const settings&)>;

struct key_spec {
  std::string key;
  std::string type;  // for messages
  setter set;
  getter get;
  std::string bare_word;  // a word --set takes unquoted besides the type, e.g. auto
};

std::string node_text(const toml::node& n) {
  std::ostringstream os;
  if (auto s = n.as_string())
    os << '"' << s->get() << '"';
  else if (n.is_table())
    os << "a table";
  else
    n.visit([&](auto&& v) { os << v; });
  return os.str();
}

[[noreturn]] void wrong(const std::string& where, const std::string& key,
                        const std::string& expected, const toml::node& n) {
  throw config_error(fmt::format("{}: {} must be {}, got {}", where, key, expected, node_text(n)));
}

// Every numeric key has a range: a value past it would overflow a duration,
// spawn absurd thread counts or size buffers without bound.
// Ranges shared by several keys.
constexpr int max_layers = 4096;          // layer counts (split, exits)
constexpr int int_max = 2'147'483'647;    // seeds
constexpr int max_ms = 3'600'000;         // timeouts and heartbeats: one hour
constexpr double max_link_ms = 60'000.0;  // simulated one-way delays: one minute
constexpr double max_ttl_s = 2'592'000.0; // thirty days

key_spec int_key(std::string key, int min, int max, std::function<int&(settings&)> ref) {
  key_spec k{key, "integer", {}, {}, {}};
  k.set = [key, min, max, ref](settings& s, const toml::node& n, const std::string& where) {
    auto v = n.value_exact<int64_t>();
    if (!v)
      wrong(where, key, "an integer", n);
    if (*v < min)
      wrong(where, key, fmt::format("an integer >= {}", min), n);
    if (*v > max)
      wrong(where, key, fmt::format("an integer <= {}", max), n);
    ref(s) = int(*v);
  };
  k.get = [ref](const settings& s) { return std::to_string(ref(const_cast<settings&>(s))); };
  return k;
}

/// The number `n` holds, checked against [min, max] (or (min, max]).
double checked_number(const std::string& key, double min, double max, bool strictly_greater,
                      const toml::node& n, const std::string& where) {
  std::optional<double> v = n.is_integer() ? std::optional<double>(double(*n.value<int64_t>()))
                                           : n.value_exact<double>();
  if (!v)
    wrong(where, key, "a number", n);
  if (*v < min || (strictly_greater && *v == min) || std::isnan(*v))
    wrong(where, key, fmt::format("a number {} {}", strictly_greater ? ">" : ">=", min), n);
  if (!std::isfinite(*v) || *v > max)
    wrong(where, key, fmt::format("a finite number <= {}", max), n);
  return *v;
}

key_spec float_key(std::string key, double min, double max, std::function<double&(settings&)> ref,
                   bool strictly_greater = false) {
  key_spec k{key, "number", {}, {}, {}};
  k.set = [key, min, max, ref, strictly_greater](settings& s, const toml::node& n,
                                                 const std::string& where) {
    ref(s) = checked_number(key, min, max, strictly_greater, n, where);
  };
  k.get = [ref](const settings& s) { return fmt::format("{}", ref(const_cast<settings&>(s))); };
  return k;
}

/// A number, or the word `word` for "not set" (std::nullopt).
key_spec optional_float_key(std::string key, std::string word, double min, double max,
                            std::function<std::optional<double>&(settings&)> ref) {
  key_spec k{key, fmt::format("number or \"{}\"", word), {}, {}, {}};
  k.bare_word = word;
  k.set = [key, word, min, max, ref](settings& s, const toml::node& n, const std::string& where) {
    if (auto w = n.value_exact<std::string>()) {
      if (*w != word)
        wrong(where, key, fmt::format("a number or \"{}\"", word), n);
      ref(s).reset();
      return;
    }
    if (!n.is_number())
      wrong(where, key, fmt::format("a number or \"{}\"", word), n);
    ref(s) = checked_number(key, min, max, false, n, where);
  };
  k.get = [word, ref](const settings& s) {
    const auto& v = ref(const_cast<settings&>(s));
    return v ? fmt::format("{}", *v) : fmt::format("\"{}\"", word);
  };
  return k;
}

using number_map = std::map<std::string, double>;

/// One entry of a map of numbers (an absent entry is not set).
key_spec map_entry_key(std::string key, std::string entry, double min, double max,
                       std::function<number_map&(settings&)> ref) {
  key_spec k{key, "number", {}, {}, {}};
  k.set = [key, entry, min, max, ref](settings& s, const toml::node& n, const std::string& where) {
    ref(s)[entry] = checked_number(key, min, max, false, n, where);
  };
  k.get = [entry, ref](const settings& s) {
    const auto& m = ref(const_cast<settings&>(s));
    auto i = m.find(entry);
    return i == m.end() ? std::string("(none)") : fmt::format("{}", i->second);
  };
  return k;
}

key_spec bool_key(std::string key, std::function<bool&(settings&)> ref) {
  key_spec k{key, "boolean", {}, {}, {}};
  k.set = [key, ref](settings& s, const toml::node& n, const std::string& where) {
    auto v = n.value_exact<bool>();
    if (!v)
      wrong(where, key, "true or false", n);
    ref(s) = *v;
  };
  k.get = [ref](const settings& s) { return ref(const_cast<settings&>(s)) ? "true" : "false"; };
  return k;
}

key_spec string_key(std::string key, std::vector<std::string> allowed,
                    std::function<std::string&(settings&)> ref) {
  key_spec k{key, "string", {}, {}, {}};
  k.set = [key, allowed, ref](settings& s, const toml::node& n, const std::string& where) {
    auto v = n.value_exact<std::string>();
    if (!v)
      wrong(where, key, "a string", n);
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), *v) == allowed.end())
      wrong(where, key, fmt::format("one of \"{}\"", fmt::join(allowed, "\", \"")), n);
    ref(s) = *v;
  };
  k.get = [ref](const settings& s) {
    return fmt::format("\"{}\"", ref(const_cast<settings&>(s)));
  };
  return k;
}

/// A strategy by its name (config/strategy.hpp).
key_spec strategy_key(std::string key, std::function<strategy&(settings&)> ref) {
  key_spec k{key, "string", {}, {}, {}};
  k.set = [key, ref](settings& s, const toml::node& n, const std::string& where) {
    auto v = n.value_exact<std::string>();
    if (!v)
      wrong(where, key, "a string", n);
    auto parsed = parse_strategy(*v);
    if (!parsed)
      wrong(where, key, fmt::format("one of \"{}\"", fmt::join(strategy_names(), "\", \"")), n);
    ref(s) = *parsed;
  };
  k.get = [ref](const settings& s) {
    return fmt::format("\"{}\"", to_string(ref(const_cast<settings&>(s))));
  };
  return k;
}

/// A list of strategies by their names.
key_spec strategy_list_key(std::string key, std::function<std::vector<strategy>&(settings&)> ref) {
  key_spec k{key, "list of strings", {}, {}, {}};
  k.set = [key, ref](settings& s, const toml::node& n, const std::string& where) {
    auto arr = n.as_array();
    if (!arr)
      wrong(where, key, "a list of strings", n);
    std::vector<strategy> out;
    for (auto& e : *arr) {
      auto v = e.value_exact<std::string>();
      if (!v)
        wrong(where, key, "a list of strings", n);
      auto parsed = parse_strategy(*v);
      if (!parsed)
        throw config_error(fmt::format("{}: {} may hold \"{}\", got \"{}\"", where, key,
                                       fmt::join(strategy_names(), "\", \""), *v));
      out.push_back(*parsed);
    }
    ref(s) = out;
  };
  k.get = [ref](const settings& s) {
    std::vector<std::string> names;
    for (auto x : ref(const_cast<settings&>(s)))
      names.emplace_back(to_string(x));
    return names.empty() ? std::string("[]") : fmt::format("[\"{}\"]", fmt::join(names, "\", \""));
  };
  return k;
}

key_spec int_list_key(std::string key, std::function<std::vector<int>&(settings&)> ref) {
  key_spec k{key, "list of integers", {}, {}, {}};
  k.set = [key, ref](settings& s, const toml::node& n, const std::string& where) {
    auto arr = n.as_array();
    if (!arr)
      wrong(where, key, "a list of integers such as [2, 3]", n);
    std::vector<int> out;
    for (auto& e : *arr) {
      auto v = e.value_exact<int64_t>();
      if (!v)
        wrong(where, key, "a list of integers such as [2, 3]", n);
      out.push_back(int(*v));
    }
    for (size_t i = 0; i < out.size(); ++i) {
      if (out[i] < 1 || out[i] > max_layers)
        throw config_error(fmt::format("{}: {} must hold layer counts in 1..{}, got {}", where,
                                       key, max_layers, out[i]));
      if (i > 0 && out[i] <= out[i - 1])
        throw config_error(fmt::format("{}: {} must be strictly ascending, got [{}]", where, key,
                                       fmt::join(out, ", ")));
    }
    ref(s) = out;
  };
  k.get = [ref](const settings& s) {
    return fmt::format("[{}]", fmt::join(ref(const_cast<settings&>(s)), ", "));
  };
  return k;
}

key_spec float_list_key(std::string key, double min, double max,
                        std::function<std::vector<double>&(settings&)> ref) {
  key_spec k{key, "list of numbers", {}, {}, {}};
  k.set = [key, min, max, ref](settings& s, const toml::node& n, const std::string& where) {
    auto arr = n.as_array();
    if (!arr)
      wrong(where, key, "a list of numbers such as [0.5, 0.8]", n);
    std::vector<double> out;
    for (auto& e : *arr) {
      std::optional<double> v = e.is_integer() ? std::optional<double>(double(*e.value<int64_t>()))
                                               : e.value_exact<double>();
      if (!v || !(*v >= min && *v <= max))
        wrong(where, key, fmt::format("a list of numbers in [{}, {}]", min, max), n);
      out.push_back(*v);
    }
    ref(s) = out;
  };
  k.get = [ref](const settings& s) {
    return fmt::format("[{}]", fmt::join(ref(const_cast<settings&>(s)), ", "));
  };
  return k;
}

key_spec string_list_key(std::string key, std::vector<std::string> allowed,
                         std::function<std::vector<std::string>&(settings&)> ref) {
  key_spec k{key, "list of strings", {}, {}, {}};
  k.set = [key, allowed, ref](settings& s, const toml::node& n, const std::string& where) {
    auto arr = n.as_array();
    if (!arr)
      wrong(where, key, "a list of strings", n);
    std::vector<std::string> out;
    for (auto& e : *arr) {
      auto v = e.value_exact<std::string>();
      if (!v)
        wrong(where, key, "a list of strings", n);
      if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), *v) == allowed.end())
        throw config_error(fmt::format("{}: {} may hold \"{}\", got \"{}\"", where, key,
                                       fmt::join(allowed, "\", \""), *v));
      out.push_back(*v);
    }
    ref(s) = out;
  };
  k.get = [ref](const settings& s) {
    auto& v = ref(const_cast<settings&>(s));
    return v.empty() ? std::string("[]") : fmt::format("[\"{}\"]", fmt::join(v, "\", \""));
  };
  return k;
}

key_spec exits_list_key(std::string key, std::function<std::vector<std::vector<int>>&(settings&)> ref) {
  key_spec k{key, "list of exit lists", {}, {}, {}};
  k.set = [key, ref](settings& s, const toml::node& n, const std::string& where) {
    auto arr = n.as_array();
    if (!arr)
      wrong(where, key, "a list of exit lists such as [[2, 3], [3]]", n);
    std::vector<std::vector<int>> out;
    for (auto& e : *arr) {
      auto inner = e.as_array();
      if (!inner)
        wrong(where, key, "a list of exit lists such as [[2, 3], [3]]", n);
      std::vector<int> exits;
      for (auto& x : *inner) {
        auto v = x.value_exact<int64_t>();
        if (!v || *v < 1 || *v > max_layers || (!exits.empty() && *v <= exits.back()))
          wrong(where, key, fmt::format("lists of ascending layer counts in 1..{}", max_layers), n);
        exits.push_back(int(*v));
      }
      out.push_back(exits);
    }
    ref(s) = out;
  };
  k.get = [ref](const settings& s) {
    std::vector<std::string> parts;
    for (auto& e : ref(const_cast<settings&>(s)))
      parts.push_back(fmt::format("[{}]", fmt::join(e, ", ")));
    return fmt::format("[{}]", fmt::join(parts, ", "));
  };
  return k;
}

key_spec int_list_plain_key(std::string key, int min, int max,
                            std::function<std::vector<int>&(settings&)> ref) {
  key_spec k{key, "list of integers", {}, {}, {}};
  k.set = [key, min, max, ref](settings& s, const toml::node& n, const std::string& where) {
    auto arr = n.as_array();
    if (!arr)
      wrong(where, key, "a list of integers", n);
    std::vector<int> out;
    for (auto& e : *arr) {
      auto v = e.value_exact<int64_t>();
      if (!v || *v < min || *v > max)
        wrong(where, key, fmt::format("a list of integers in {}..{}", min, max), n);
      out.push_back(int(*v));
    }
    ref(s) = out;
  };
  k.get = [ref](const settings& s) {
    return fmt::format("[{}]", fmt::join(ref(const_cast<settings&>(s)), ", "));
  };
  return k;
}

std::vector<std::string> profile_names() {
  std::vector<std::string> out;
  for (auto& p : link_profiles())
    out.push_back(p.name);
  return out;
}

#define CECO_REF(T, member) [](settings& s) -> T& { return s.member; }

const std::vector<key_spec>& schema() {
  static const std::vector<std::string>& strategy_keys = strategy_names();
  static const std::vector<key_spec> listed = {
    string_key("model.path", {}, CECO_REF(std::string, model.path)),
    string_key("model.tokenizer", {}, CECO_REF(std::string, model.tokenizer)),
    int_list_key("model.exits", CECO_REF(std::vector<int>, model.exits)),
    string_key("model.exit_heads", {}, CECO_REF(std::string, model.exit_heads)),
    string_key("model.device", {}, CECO_REF(std::string, model.device)),
    int_key("model.context", 0, max_context_length, CECO_REF(int, model.context)),
    string_key("model.kv_dtype", {"f16", "f32"}, CECO_REF(std::string, model.kv_dtype)),
    int_key("split.layer", 1, max_layers, CECO_REF(int, split.layer)),
    strategy_key("policy.mode", CECO_REF(strategy, policy.mode)),
    int_key("policy.max_draft", 1, 256, CECO_REF(int, policy.max_draft)),
    int_key("policy.draft_candidates", 0, max_draft_candidates,
            CECO_REF(int, policy.draft_candidates)),
    string_key("policy.on_cloud_loss", {"auto", "wait", "degrade", "fail"},
               CECO_REF(std::string, policy.on_cloud_loss)),
    int_key("policy.cloud_loss_wait_ms", 0, 3'600'000, CECO_REF(int, policy.cloud_loss_wait_ms)),
    optional_float_key("policy.threshold", "auto", 0.0, 1000.0,
                       CECO_REF(std::optional<double>, policy.threshold)),
    int_key("policy.min_exit_layer", 0, max_layers, CECO_REF(int, policy.min_exit_layer)),
    string_key("compute.mode", {"measured", "profile"}, CECO_REF(std::string, compute.mode)),
    string_key("compute.profile", {}, CECO_REF(std::string, compute.profile)),
    string_key("compute.clock", {"real", "virtual"}, CECO_REF(std::string, compute.clock)),
    string_key("upload.dtype", {"auto", "f16", "f32"}, CECO_REF(std::string, upload.dtype)),
    string_key("upload.mode", {"async", "sync"}, CECO_REF(std::string, upload.mode)),
    string_key("upload.prompt", {"auto", "states", "tokens"}, CECO_REF(std::string, upload.prompt)),
    [] {
      auto names = profile_names();
      names.insert(names.begin(), "");
      return string_key("link.profile", names, CECO_REF(std::string, link.profile));
    }(),
    float_key("link.latency_ms", 0.0, max_link_ms, CECO_REF(double, link.latency_ms)),
    float_key("link.bandwidth_mbps", 0.0, 1e6, CECO_REF(double, link.bandwidth_mbps)),
    float_key("link.jitter_ms", 0.0, max_link_ms, CECO_REF(double, link.jitter_ms)),
    int_key("link.seed", 0, int_max, CECO_REF(int, link.seed)),
    float_key("session.ttl_s", 0.0, max_ttl_s, CECO_REF(double, session.ttl_s), true),
    int_key("session.max_sessions", 1, 1'000'000, CECO_REF(int, session.max_sessions)),
    int_key("session.max_sessions_per_connection", 1, 1'000'000,
            CECO_REF(int, session.max_sessions_per_connection)),
    float_key("session.max_memory_mb", 0.0, 1e8, CECO_REF(double, session.max_memory_mb)),
    int_key("session.batch_sessions", 1, 4096, CECO_REF(int, session.batch_sessions)),
    string_key("placement.exit_evaluator", {"edge", "cloud"},
               CECO_REF(std::string, placement.exit_evaluator)),
    string_key("placement.uploader", {"edge", "cloud"}, CECO_REF(std::string, placement.uploader)),
    int_list_key("placement.cloud_stages", CECO_REF(std::vector<int>, placement.cloud_stages)),
    int_key("generation.max_tokens", 1, 1'000'000, CECO_REF(int, generation.max_tokens)),
    string_key("generation.prompt", {}, CECO_REF(std::string, generation.prompt)),
    float_key("sampling.temperature", 0.0, 100.0, CECO_REF(double, sampling.temperature)),
    int_key("sampling.top_k", 0, 1'000'000, CECO_REF(int, sampling.top_k)),
    float_key("sampling.top_p", 0.0, 1.0, CECO_REF(double, sampling.top_p)),
    int_key("sampling.seed", 0, int_max, CECO_REF(int, sampling.seed)),
    int_key("runtime.threads", 1, 256, CECO_REF(int, runtime.threads)),
    string_key("cloud.host", {}, CECO_REF(std::string, cloud.host)),
    int_key("cloud.port", 0, 65535, CECO_REF(int, cloud.port)),
    string_key("cloud.secret", {}, CECO_REF(std::string, cloud.secret)),
    int_key("cloud.heartbeat_ms", 0, max_ms, CECO_REF(int, cloud.heartbeat_ms)),
    int_key("cloud.request_timeout_ms", 1, max_ms, CECO_REF(int, cloud.request_timeout_ms)),
    int_key("cloud.connect_tries", 1, 1000, CECO_REF(int, cloud.connect_tries)),
    bool_key("cloud.insecure", CECO_REF(bool, cloud.insecure)),
    bool_key("cloud.allow_mixed_quantization", CECO_REF(bool, cloud.allow_mixed_quantization)),
    bool_key("cloud.tls", CECO_REF(bool, cloud.tls)),
    string_key("cloud.tls_certificate", {}, CECO_REF(std::string, cloud.tls_certificate)),
    string_key("cloud.tls_key", {}, CECO_REF(std::string, cloud.tls_key)),
    string_key("cloud.tls_ca_file", {}, CECO_REF(std::string, cloud.tls_ca_file)),
    string_list_key("cloud.hosts", {}, CECO_REF(std::vector<std::string>, cloud.hosts)),
    string_key("cluster.role", {"single", "gateway", "worker", "stage"},
               CECO_REF(std::string, cluster.role)),
    string_key("cluster.host", {}, CECO_REF(std::string, cluster.host)),
    int_key("cluster.port", 0, 65535, CECO_REF(int, cluster.port)),
    string_list_key("cluster.workers", {}, CECO_REF(std::vector<std::string>, cluster.workers)),
    int_key("cluster.join_interval_ms", 10, max_ms, CECO_REF(int, cluster.join_interval_ms)),
    int_key("cluster.local_workers", 0, 64, CECO_REF(int, cluster.local_workers)),
    bool_key("cluster.insecure", CECO_REF(bool, cluster.insecure)),
    string_key("cluster.tls_certificate", {}, CECO_REF(std::string, cluster.tls_certificate)),
    string_key("cluster.tls_key", {}, CECO_REF(std::string, cluster.tls_key)),
    string_key("cluster.tls_ca_file", {}, CECO_REF(std::string, cluster.tls_ca_file)),
    string_list_key("cluster.stage_hosts", {}, CECO_REF(std::vector<std::string>, cluster.stage_hosts)),
    int_key("cluster.stage", 1, max_layers, CECO_REF(int, cluster.stage)),
    string_key("experiment.name", {}, CECO_REF(std::string, experiment.name)),
    string_key("experiment.dataset", {}, CECO_REF(std::string, experiment.dataset)),
    string_key("experiment.format", {"auto", "alpaca", "xsum", "boolq", "quac", "imdb", "text"},
               CECO_REF(std::string, experiment.format)),
    int_key("experiment.samples", 1, 10'000'000, CECO_REF(int, experiment.samples)),
    int_key("experiment.seed", 0, int_max, CECO_REF(int, experiment.seed)),
    strategy_list_key("experiment.strategies", CECO_REF(std::vector<strategy>, experiment.strategies)),
    int_key("experiment.repetitions", 1, 10'000, CECO_REF(int, experiment.repetitions)),
    int_key("experiment.sessions", 1, 1024, CECO_REF(int, experiment.sessions)),
    float_list_key("sweep.threshold", 0.0, 1000.0, CECO_REF(std::vector<double>, sweep.threshold)),
    int_list_plain_key("sweep.split", 1, max_layers, CECO_REF(std::vector<int>, sweep.split)),
    exits_list_key("sweep.exits", CECO_REF(std::vector<std::vector<int>>, sweep.exits)),
    string_list_key("sweep.upload_dtype", {"auto", "f16", "f32"},
                    CECO_REF(std::vector<std::string>, sweep.upload_dtype)),
    string_list_key("sweep.link", profile_names(), CECO_REF(std::vector<std::string>, sweep.link)),
    float_list_key("sweep.latency_ms", 0.0, max_link_ms,
                   CECO_REF(std::vector<double>, sweep.latency_ms)),
    int_list_plain_key("sweep.sessions", 1, 1024, CECO_REF(std::vector<int>, sweep.sessions)),
    int_list_plain_key("sweep.workers", 0, 64, CECO_REF(std::vector<int>, sweep.workers)),
  };
  static const std::vector<key_spec> keys = [] {
    auto out = listed;
    out.push_back(string_key("experiment.reference.name", {},
                             CECO_REF(std::string, experiment.reference.name)));
    for (const auto& strategy : strategy_keys) {
      out.push_back(map_entry_key("experiment.reference.total_vs_cloud." + strategy, strategy,
                                  0.0, 1e6,
                                  [](settings& s) -> number_map& {
                                    return s.experiment.reference.total_vs_cloud;
                                  }));
      out.push_back(map_entry_key("experiment.reference.cloud_compute_vs_cloud." + strategy,
                                  strategy, -1.0, 1e6,
                                  [](settings& s) -> number_map& {
                                    return s.experiment.reference.cloud_compute_vs_cloud;
                                  }));
    }
    return out;
  }();
  return keys;
}

#undef CECO_REF

const key_spec& find_key(const std::string& key, const std::string& where) {
  for (auto& k : schema())
    if (k.key == key)
      return k;
  // The nearest keys by edit distance, of the whole key or of its last part
  // (a misspelt name in the right section, or the right name in another).
  auto last_part = [](const std::string& k) { return k.substr(k.rfind('.') + 1); };
  std::vector<std::pair<size_t, std::string>> near;
  for (auto& k : schema()) {
    size_t d = std::min(edit_distance(key, k.key), edit_distance(last_part(key), last_part(k.key)));
    if (d <= std::max<size_t>(2, last_part(key).size() / 3))
      near.emplace_back(d, k.key);
  }
  std::stable_sort(near.begin(), near.end(),
                   [](auto& x, auto& y) { return x.first < y.first; });
  std::vector<std::string> names;
  for (size_t i = 0; i < near.size() && i < 3; ++i)
    names.push_back(near[i].second);
  throw config_error(fmt::format(
    "{}: unknown key '{}'{} (every key with its default: config/sim.toml or "
    "`ceco sim --print-config`)",
    where, key, names.empty() ? "" : fmt::format("; did you mean {}?", fmt::join(names, ", "))));
}

void apply_table(settings& s, const toml::table& t, const std::string& prefix,
                 const std::string& file) {
  for (auto&& [k, v] : t) {
    std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    std::string where = file;
    if (auto line = v.source().begin.line; line > 0)
      where += fmt::format(":{}", line);
    if (auto sub = v.as_table()) {
      bool is_section = false;
      for (auto& spec : schema())
        if (spec.key.rfind(key + ".", 0) == 0)
          is_section = true;
      if (!is_section)
        throw config_error(fmt::format("{}: unknown section [{}]", where, key));
      apply_table(s, *sub, key, file);
      continue;
    }
    find_key(key, where).set(s, v, where);
  }
}

} // namespace

void apply_override(settings& s, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw config_error(fmt::format("--set {}: expected key=value", assignment));
  std::string key = assignment.substr(0, eq);
  std::string value = assignment.substr(eq + 1);
  std::string where = "--set " + assignment;
  const auto& spec = find_key(key, where);
  std::string text = value;
  if (spec.type.rfind("list", 0) == 0 && (text.empty() || text.front() != '['))
    text = "[" + text + "]";
  toml::table doc;
  try {
    doc = toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    if (!spec.bare_word.empty() && value == spec.bare_word) {
      doc.insert_or_assign("v", value);
      spec.set(s, *doc.get("v"), where);
      return;
    }
    if (spec.type != "string")
      throw config_error(fmt::format("{}: {} must be a {}, got '{}'", where, key, spec.type, value));
    doc.insert_or_assign("v", value);  // a bare string
  }
  auto* node = doc.get("v");
  if (spec.type == "string" && !node->is_string())
    doc.insert_or_assign("v", value), node = doc.get("v");
  spec.set(s, *node, where);
}

namespace {

/// `path` for an error message: at most 120 characters, and its length when cut.
std::string path_excerpt(const std::string& path) {
  std::string out;
  for (char c : path.substr(0, 120))
    out += (c == '\0') ? std::string("\\0") : std::string(1, c);
  if (path.size() > 120)
    out += fmt::format("... ({} characters)", path.size());
  return out;
}

/// A path setting names something that exists and can be looked at; the
/// checkpoint's folder may be a folder, every other file must be a file.
void check_path(const std::string& key, const std::string& path) {
  if (path.find('\0') != std::string::npos)
    throw config_error(fmt::format("{}: a path cannot hold a NUL character, got \"{}\"", key,
                                   path_excerpt(path)));
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
    throw config_error(fmt::format("{}: cannot use '{}': {}", key, path_excerpt(path),
                                   ec.message()));
  if (!std::filesystem::exists(st))
    throw config_error(fmt::format("{}: no such file or folder '{}'", key, path_excerpt(path)));
  if (key != "model.path" && std::filesystem::is_directory(st))
    throw config_error(fmt::format("{}: '{}' is a folder, a file is expected", key,
                                   path_excerpt(path)));
}

void check_tls(const settings& s) {
  const auto& c = s.cloud;
  const bool any_file = !c.tls_certificate.empty() || !c.tls_key.empty() || !c.tls_ca_file.empty();
  if (!c.tls && any_file)
    throw config_error("cloud.tls_certificate, cloud.tls_key and cloud.tls_ca_file are only used "
                       "with cloud.tls = true, which is false");
  if (c.tls_certificate.empty() != c.tls_key.empty())
    throw config_error(fmt::format(
      "cloud.tls_certificate and cloud.tls_key go together, but only {} is set",
      c.tls_key.empty() ? "cloud.tls_certificate" : "cloud.tls_key"));
  if (!c.tls_certificate.empty() && c.tls_ca_file.empty())
    throw config_error("cloud.tls_ca_file is empty, but checking the peer's certificate needs "
                       "the CA that signed it (for a self-signed certificate: the certificate)");
  if (c.tls && c.tls_certificate.empty() && c.tls_ca_file.empty())
    throw config_error(
      "cloud.tls = true needs cloud.tls_certificate, cloud.tls_key and cloud.tls_ca_file: TLS "
      "without certificates authenticates no one and is not offered (deploy/make-tls-certs.sh "
      "makes a CA and a certificate per node)");
  if (c.tls_certificate.empty() && !c.tls_ca_file.empty())
    throw config_error("cloud.tls_ca_file is set without cloud.tls_certificate and cloud.tls_key: "
                       "a node that checks its peer must present its own certificate too");
}

/// A gateway or worker talks to other cloud nodes over CAF's network layer:
/// with mutual TLS (all three files), or in the clear only when asked.
void check_cluster(const settings& s) {
  const auto& c = s.cluster;
  const int files = int(!c.tls_certificate.empty()) + int(!c.tls_key.empty())
                    + int(!c.tls_ca_file.empty());
  if (files != 0 && files != 3)
    throw config_error(
      "cluster.tls_certificate, cluster.tls_key and cluster.tls_ca_file go together (mutual TLS "
      "between cloud nodes), but only some are set");
  if (files == 3 && c.insecure)
    throw config_error("cluster.insecure = true and cluster TLS files are both set: choose one");
  for (const auto& h : s.cloud.hosts)
    if (!split_host_port(h))
      throw config_error(fmt::format("cloud.hosts: '{}' is not \"host:port\" with a port of "
                                     "1-65535", h));
  const auto& stages = s.placement.cloud_stages;
  if (c.stage_hosts.size() > stages.size())
    throw config_error(fmt::format("cluster.stage_hosts names {} node(s), but "
                                   "placement.cloud_stages has {} stage(s)",
                                   c.stage_hosts.size(), stages.size()));
  for (const auto& h : c.stage_hosts)
    if (!split_host_port(h))
      throw config_error(fmt::format("cluster.stage_hosts: '{}' is not \"host:port\" with a port "
                                     "of 1-65535", h));
  if (c.role == "stage" && (stages.empty() || c.stage > int(stages.size())))
    throw config_error(fmt::format("cluster.role = \"stage\" runs stage cluster.stage = {} of "
                                   "placement.cloud_stages, which has {}", c.stage, stages.size()));
  if (c.role == "single" && c.stage_hosts.empty())
    return;
  if (files == 0 && !c.insecure)
    throw config_error(fmt::format(
      "cluster.role = \"{}\" needs cluster.tls_certificate, cluster.tls_key and "
      "cluster.tls_ca_file (mutual TLS between cloud nodes; deploy/make-tls-certs.sh makes them), "
      "or cluster.insecure = true on a trusted network",
      c.role));
  if (c.role == "gateway" && c.workers.empty())
    throw config_error("cluster.role = \"gateway\" needs cluster.workers: the workers' "
                       "\"host:port\" (e.g. [\"10.0.0.2:7171\"])");
  for (const auto& w : c.workers)
    if (!split_host_port(w))
      throw config_error(fmt::format("cluster.workers: '{}' is not \"host:port\" with a port "
                                     "of 1-65535", w));
  if (c.local_workers > 0)
    throw config_error("cluster.local_workers is for in-process runs (ceco sim, ceco experiment); "
                       "a gateway's workers are cluster.workers");
}

} // namespace

std::optional<std::pair<std::string, int>> split_host_port(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= address.size())
    return std::nullopt;
  auto host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')  // [::1]:7171
    host = host.substr(1, host.size() - 2);
  int port = 0;
  for (size_t i = colon + 1; i < address.size(); ++i) {
    if (address[i] < '0' || address[i] > '9' || port > 65535)
      return std::nullopt;
    port = port * 10 + (address[i] - '0');
  }
  if (port < 1 || port > 65535)
    return std::nullopt;
  return std::pair{host, port};
}

settings real_network_defaults() {
  settings s;
  s.link.latency_ms = 0.0;
  s.link.bandwidth_mbps = 0.0;
  s.link.jitter_ms = 0.0;
  return s;
}

settings load_settings(const std::string& file, const std::vector<std::string>& overrides,
                       const settings& defaults) {
  settings s = defaults;
  if (!file.empty()) {
    if (!std::filesystem::exists(file))
      throw config_error(fmt::format("{}: no such configuration file", file));
    toml::table t;
    try {
      t = toml::parse_file(file);
    } catch (const toml::parse_error& e) {
      throw config_error(fmt::format("{}:{}:{}: {}", file, e.source().begin.line,
                                     e.source().begin.column, e.description()));
    }
    apply_table(s, t, "", file);
    // Relative paths in a file are relative to the file.
    auto base = std::filesystem::path(file).parent_path();
    for (auto* p : {&s.model.path, &s.model.tokenizer, &s.model.exit_heads, &s.experiment.dataset,
                    &s.cloud.tls_certificate, &s.cloud.tls_key, &s.cloud.tls_ca_file,
                    &s.cluster.tls_certificate, &s.cluster.tls_key, &s.cluster.tls_ca_file})
      if (!p->empty() && *p != "none" && std::filesystem::path(*p).is_relative())
        *p = (base / *p).lexically_normal().string();
  }
  for (auto& o : overrides)
    apply_override(s, o);
  apply_link_profile(s);
  for (auto [key, path] : {std::pair{"model.path", &s.model.path},
                           std::pair{"model.tokenizer", &s.model.tokenizer},
                           std::pair{"model.exit_heads", &s.model.exit_heads},
                           std::pair{"experiment.dataset", &s.experiment.dataset},
                           std::pair{"cloud.tls_certificate", &s.cloud.tls_certificate},
                           std::pair{"cloud.tls_key", &s.cloud.tls_key},
                           std::pair{"cloud.tls_ca_file", &s.cloud.tls_ca_file},
                           std::pair{"cluster.tls_certificate", &s.cluster.tls_certificate},
                           std::pair{"cluster.tls_key", &s.cluster.tls_key},
                           std::pair{"cluster.tls_ca_file", &s.cluster.tls_ca_file}})
    if (!path->empty() && *path != "none")
      check_path(key, *path);
  check_tls(s);
  check_cluster(s);
  return s;
}

const std::vector<link_profile>& link_profiles() {
  static const std::vector<link_profile> profiles = {
    {"lan", 0.5, 1000.0, 0.0, "a local network: 0.5 ms, 1 Gbit/s"},
    {"wan", 25.0, 10.0, 5.0, "a wide-area link: 25 ms + up to 5 ms jitter, 10 Mbit/s"},
    {"paper", 3.0, 30.0, 0.0, "the CE-CoLLM testbed (docs/design.md §2): 3 ms, 30 Mbit/s"},
  };
  return profiles;
}

void apply_link_profile(settings& s) {
  if (s.link.profile.empty())
    return;
  for (auto& p : link_profiles())
    if (s.link.profile == p.name) {
      s.link.latency_ms = p.latency_ms;
      s.link.bandwidth_mbps = p.bandwidth_mbps;
      s.link.jitter_ms = p.jitter_ms;
      return;
    }
  throw config_error(fmt::format("link.profile: unknown profile '{}'", s.link.profile));
}

void check_consistency(const settings& s) {
  // A cloud request goes up and comes back: its round trip on the link.
  const double round_trip_ms = 2.0 * s.link.latency_ms + s.link.jitter_ms;
  if (round_trip_ms >= s.cloud.request_timeout_ms)
    throw config_error(fmt::format(
      "link.latency_ms = {} (with link.jitter_ms = {}) gives a cloud round trip of up to {} ms, "
      "but cloud.request_timeout_ms = {}: every cloud request would time out; raise "
      "cloud.request_timeout_ms above {} ms or lower the latency",
      s.link.latency_ms, s.link.jitter_ms, round_trip_ms, s.cloud.request_timeout_ms,
      round_trip_ms));
  // An idle cloud session expires after session.ttl_s: shorter than a few
  // round trips (and than 100 ms of the edge's own work between requests),
  // sessions expire while they are in use.
  const double min_ttl_ms = std::max(100.0, 4.0 * round_trip_ms);
  if (s.session.ttl_s * 1000.0 < min_ttl_ms)
    throw config_error(fmt::format(
      "session.ttl_s = {} s is shorter than a session is idle between two of its requests: at "
      "least {} s is needed (100 ms, and 4 cloud round trips of link.latency_ms = {} with "
      "link.jitter_ms = {}); sessions would expire while in use",
      s.session.ttl_s, min_ttl_ms / 1000.0, s.link.latency_ms, s.link.jitter_ms));
}

void check_against_model(const settings& s, const model_config& cfg) {
  check_consistency(s);
  if (s.model.context > cfg.max_seq)
    throw config_error(fmt::format(
      "model.context = {} is past the model's context length of {} tokens", s.model.context,
      cfg.max_seq));
  if (s.split.layer < 1 || s.split.layer >= cfg.n_layer)
    throw config_error(fmt::format(
      "split.layer is {}, but the model has {} layers: the edge must run 1..{} of them",
      s.split.layer, cfg.n_layer, cfg.n_layer - 1));
  const auto& stages = s.placement.cloud_stages;
  for (size_t i = 0; i < stages.size(); ++i)
    if (stages[i] <= (i == 0 ? s.split.layer : stages[i - 1]) || stages[i] >= cfg.n_layer)
      throw config_error(fmt::format(
        "placement.cloud_stages = [{}]: each boundary must be past split.layer = {} and the one "
        "before it, and below the model's {} layers (a stage runs at least one layer)",
        fmt::join(stages, ", "), s.split.layer, cfg.n_layer));
  if (!stages.empty() && s.compute.mode == "profile")
    throw config_error("placement.cloud_stages with compute.profile: staged cloud layers are "
                       "measured only, not yet simulated on a profile's devices");
  for (int e : s.model.exits)
    if (e > s.split.layer)
      throw config_error(fmt::format(
        "model.exits has an exit after layer {}, past split.layer = {} (exits run on the edge)",
        e, s.split.layer));
  const bool needs_exits = uses_exits(s.policy.mode);
  if (needs_exits && s.model.exits.empty())
    throw config_error(fmt::format("model.exits is empty, but policy.mode = \"{}\" needs exits",
                                   to_string(s.policy.mode)));
  if (needs_exits && !s.model.exits.empty() && s.policy.min_exit_layer > s.model.exits.back())
    throw config_error(fmt::format(
      "policy.min_exit_layer = {} is past every exit of model.exits = [{}]: no exit could ever "
      "fire and policy.mode = \"{}\" would silently run as the cloud strategy",
      s.policy.min_exit_layer, fmt::join(s.model.exits, ", "), to_string(s.policy.mode)));
}

std::string describe_settings(const settings& s) {
  std::string out;
  for (auto& k : schema())
    out += fmt::format("{} = {}\n", k.key, k.get(s));
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string upload_dtype_of(const settings& s, strategy mode) {
  if (s.upload.dtype == "auto")
    return mode == strategy::exact ? "f32" : "f16";
  return s.upload.dtype;
}

bool prompt_to_cloud_of(const settings& s, strategy mode) {
  if (mode != strategy::collaborative && mode != strategy::speculative && mode != strategy::exact)
    return false;
  return s.upload.prompt == "tokens" || (s.upload.prompt == "auto" && mode == strategy::exact);
}

std::string exactness_of(const settings& s, strategy mode) {
  if (mode != strategy::exact)
    return {};
  return upload_dtype_of(s, mode) == "f32" ? "exact" : "exact to the f16 split";
}

} // namespace ceco
