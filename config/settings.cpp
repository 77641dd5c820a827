#include "config/settings.hpp"

#include <filesystem>
#include <functional>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

namespace ceco {

namespace {

using setter = std::function<void(settings&, const toml::node&, const std::string& where)>;
using getter = std::function<std::string(const settings&)>;

struct key_spec {
  std::string key;
  std::string type;  // for messages
  setter set;
  getter get;
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

key_spec int_key(std::string key, int min, std::function<int&(settings&)> ref) {
  key_spec k{key, "integer", {}, {}};
  k.set = [key, min, ref](settings& s, const toml::node& n, const std::string& where) {
    auto v = n.value_exact<int64_t>();
    if (!v)
      wrong(where, key, "an integer", n);
    if (*v < min || *v > 1'000'000'000)
      wrong(where, key, fmt::format("an integer >= {}", min), n);
    ref(s) = int(*v);
  };
  k.get = [ref](const settings& s) { return std::to_string(ref(const_cast<settings&>(s))); };
  return k;
}

key_spec float_key(std::string key, double min, std::function<double&(settings&)> ref,
                   bool strictly_greater = false) {
  key_spec k{key, "number", {}, {}};
  k.set = [key, min, ref, strictly_greater](settings& s, const toml::node& n,
                                            const std::string& where) {
    std::optional<double> v = n.is_integer() ? std::optional<double>(double(*n.value<int64_t>()))
                                             : n.value_exact<double>();
    if (!v)
      wrong(where, key, "a number", n);
    if (*v < min || (strictly_greater && *v == min) || std::isnan(*v))
      wrong(where, key, fmt::format("a number {} {}", strictly_greater ? ">" : ">=", min), n);
    ref(s) = *v;
  };
  k.get = [ref](const settings& s) { return fmt::format("{}", ref(const_cast<settings&>(s))); };
  return k;
}

key_spec string_key(std::string key, std::vector<std::string> allowed,
                    std::function<std::string&(settings&)> ref) {
  key_spec k{key, "string", {}, {}};
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

key_spec int_list_key(std::string key, std::function<std::vector<int>&(settings&)> ref) {
  key_spec k{key, "list of integers", {}, {}};
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
      if (out[i] < 1)
        throw config_error(fmt::format("{}: {} must hold layer counts >= 1, got {}", where, key,
                                       out[i]));
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

#define CECO_REF(T, member) [](settings& s) -> T& { return s.member; }

const std::vector<key_spec>& schema() {
  static const std::vector<key_spec> keys = {
    string_key("model.path", {}, CECO_REF(std::string, model.path)),
    string_key("model.tokenizer", {}, CECO_REF(std::string, model.tokenizer)),
    int_list_key("model.exits", CECO_REF(std::vector<int>, model.exits)),
    string_key("model.exit_heads", {}, CECO_REF(std::string, model.exit_heads)),
    string_key("model.device", {}, CECO_REF(std::string, model.device)),
    int_key("split.layer", 1, CECO_REF(int, split.layer)),
    string_key("policy.mode", {"cloud", "naive", "standalone", "collaborative"},
               CECO_REF(std::string, policy.mode)),
    float_key("policy.threshold", 0.0, CECO_REF(double, policy.threshold)),
    int_key("policy.min_exit_layer", 0, CECO_REF(int, policy.min_exit_layer)),
    string_key("upload.dtype", {"f16", "f32"}, CECO_REF(std::string, upload.dtype)),
    string_key("upload.mode", {"async", "sync"}, CECO_REF(std::string, upload.mode)),
    float_key("link.latency_ms", 0.0, CECO_REF(double, link.latency_ms)),
    float_key("link.bandwidth_mbps", 0.0, CECO_REF(double, link.bandwidth_mbps)),
    float_key("link.jitter_ms", 0.0, CECO_REF(double, link.jitter_ms)),
    int_key("link.seed", 0, CECO_REF(int, link.seed)),
    float_key("session.ttl_s", 0.0, CECO_REF(double, session.ttl_s), true),
    int_key("session.max_sessions", 1, CECO_REF(int, session.max_sessions)),
    int_key("generation.max_tokens", 1, CECO_REF(int, generation.max_tokens)),
    string_key("generation.prompt", {}, CECO_REF(std::string, generation.prompt)),
    int_key("runtime.threads", 1, CECO_REF(int, runtime.threads)),
  };
  return keys;
}

#undef CECO_REF

const key_spec& find_key(const std::string& key, const std::string& where) {
  for (auto& k : schema())
    if (k.key == key)
      return k;
  std::vector<std::string> known;
  for (auto& k : schema())
    known.push_back(k.key);
  throw config_error(fmt::format("{}: unknown key '{}' (known keys: {})", where, key,
                                 fmt::join(known, ", ")));
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
  if (spec.type == "list of integers" && (text.empty() || text.front() != '['))
    text = "[" + text + "]";
  toml::table doc;
  try {
    doc = toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    if (spec.type != "string")
      throw config_error(fmt::format("{}: {} must be a {}, got '{}'", where, key, spec.type, value));
    doc.insert_or_assign("v", value);  // a bare string
  }
  auto* node = doc.get("v");
  if (spec.type == "string" && !node->is_string())
    doc.insert_or_assign("v", value), node = doc.get("v");
  spec.set(s, *node, where);
}

settings load_settings(const std::string& file, const std::vector<std::string>& overrides) {
  settings s;
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
    for (auto* p : {&s.model.path, &s.model.tokenizer, &s.model.exit_heads})
      if (!p->empty() && *p != "none" && std::filesystem::path(*p).is_relative())
        *p = (base / *p).lexically_normal().string();
  }
  for (auto& o : overrides)
    apply_override(s, o);
  for (auto [key, path] : {std::pair{"model.path", &s.model.path},
                           std::pair{"model.tokenizer", &s.model.tokenizer},
                           std::pair{"model.exit_heads", &s.model.exit_heads}})
    if (!path->empty() && *path != "none" && !std::filesystem::exists(*path))
      throw config_error(fmt::format("{}: no such file or folder '{}'", key, *path));
  return s;
}

void check_against_model(const settings& s, const model_config& cfg) {
  if (s.split.layer < 1 || s.split.layer >= cfg.n_layer)
    throw config_error(fmt::format(
      "split.layer is {}, but the model has {} layers: the edge must run 1..{} of them",
      s.split.layer, cfg.n_layer, cfg.n_layer - 1));
  for (int e : s.model.exits)
    if (e > s.split.layer)
      throw config_error(fmt::format(
        "model.exits has an exit after layer {}, past split.layer = {} (exits run on the edge)",
        e, s.split.layer));
  bool needs_exits = s.policy.mode == "standalone" || s.policy.mode == "collaborative";
  if (needs_exits && s.model.exits.empty())
    throw config_error(fmt::format("model.exits is empty, but policy.mode = \"{}\" needs exits",
                                   s.policy.mode));
}

std::string describe_settings(const settings& s) {
  std::string out;
  for (auto& k : schema())
    out += fmt::format("{} = {}\n", k.key, k.get(s));
  return out;
}

} // namespace ceco
