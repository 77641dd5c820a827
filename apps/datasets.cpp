#include "apps/datasets.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "config/settings.hpp"
#include "model/tokenizer.hpp"

namespace ceco::app {

namespace {

using json = nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw config_error(fmt::format("experiment.dataset: cannot open '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::istringstream in(read_file(path));
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      throw config_error(fmt::format("{}:{}: not JSON: {}", path, n, e.what()));
    }
  }
  return out;
}

std::string field(const json& j, const char* key, const std::string& path, size_t record) {
  if (!j.contains(key))
    throw config_error(fmt::format("{}: record {} has no field '{}'", path, record, key));
  const auto& v = j[key];
  if (v.is_string())
    return v.get<std::string>();
  return v.dump();
}

/// RFC 4180-style CSV: quoted fields may hold commas, newlines and "".
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows(1);
  std::string cell;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        cell += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cell += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      rows.back().push_back(std::move(cell));
      cell.clear();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n')
        ++i;
      rows.back().push_back(std::move(cell));
      cell.clear();
      rows.emplace_back();
    } else {
      cell += c;
    }
  }
  if (!cell.empty() || !rows.back().empty())
    rows.back().push_back(std::move(cell));
  if (rows.back().empty())
    rows.pop_back();
  return rows;
}

/// A record before templating: the passage may be shortened to fit.
struct record {
  size_t index;
  std::string passage;
  std::string before;  // text before the passage
  std::string after;   // text after it
  std::string reference;
};

std::vector<record> read_records(const std::string& path, const std::string& format) {
  std::vector<record> out;
  if (format == "alpaca") {
    json all;
    try {
      all = json::parse(read_file(path));
    } catch (const json::exception& e) {
      throw config_error(fmt::format("{}: not a JSON array of records: {}", path, e.what()));
    }
    for (size_t i = 0; i < all.size(); ++i) {
      auto input = all[i].value("input", std::string());
      out.push_back({i, field(all[i], "instruction", path, i),
                     "", input.empty() ? "\n" : "\n" + input + "\n",
                     field(all[i], "output", path, i)});
    }
  } else if (format == "xsum" || format == "boolq" || format == "quac") {
    auto rows = read_jsonl(path);
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& j = rows[i];
      if (format == "xsum") {
        out.push_back({i, field(j, "document", path, i), "", "\nSummary:", field(j, "summary", path, i)});
      } else if (format == "boolq") {
        auto answer = field(j, "answer", path, i);
        std::transform(answer.begin(), answer.end(), answer.begin(), ::tolower);
        out.push_back({i, field(j, "passage", path, i), "",
                       "\nQuestion: " + field(j, "question", path, i) + "?\nAnswer:",
                       answer == "true" ? "yes" : "no"});
      } else {
        // "question1: ...\nquestion2: ..." and "possible answers for question1:\n...\n..."
        auto q = field(j, "question", path, i);
        q = q.substr(0, q.find('\n'));
        if (auto c = q.find(": "); q.rfind("question", 0) == 0 && c != std::string::npos)
          q = q.substr(c + 2);
        auto a = field(j, "answer", path, i);
        if (auto nl = a.find('\n'); a.rfind("possible answers", 0) == 0 && nl != std::string::npos)
          a = a.substr(nl + 1);
        a = a.substr(0, a.find('\n'));
        out.push_back({i, field(j, "passage", path, i), "", "\nQuestion: " + q + "\nAnswer:", a});
      }
    }
  } else if (format == "imdb") {
    auto rows = parse_csv(read_file(path));
    if (rows.empty() || rows[0].size() < 2 || rows[0][0] != "text" || rows[0][1] != "label")
      throw config_error(fmt::format("{}: expected a CSV with the header text,label", path));
    for (size_t i = 1; i < rows.size(); ++i) {
      if (rows[i].size() < 2)
        throw config_error(fmt::format("{}: row {} has {} fields, expected 2", path, i, rows[i].size()));
      out.push_back({i - 1, rows[i][0], "Review: ", "\nSentiment:",
                     rows[i][1] == "1" || rows[i][1] == "positive" ? "positive" : "negative"});
    }
  } else if (format == "text") {
    auto text = read_file(path);
    std::vector<std::string> paragraphs;
    size_t at = 0;
    while (at < text.size()) {
      auto end = text.find("\n\n", at);
      if (end == std::string::npos)
        end = text.size();
      paragraphs.push_back(text.substr(at, end - at));
      at = end + 2;
    }
    size_t i = 0;
    for (auto& p : paragraphs) {
      std::istringstream words(p);
      std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
      if (w.size() >= 12) {
        auto half = w.size() / 2;
        out.push_back({i, fmt::format("{}", fmt::join(w.begin(), w.begin() + std::ptrdiff_t(half), " ")),
                       "", "", fmt::format("{}", fmt::join(w.begin() + std::ptrdiff_t(half), w.end(), " "))});
      }
      ++i;
    }
  } else {
    throw config_error(fmt::format("experiment.format: unknown format '{}'", format));
  }
  if (out.empty())
    throw config_error(fmt::format("{}: no records of format {}", path, format));
  return out;
}

} // namespace

std::string detect_format(const std::string& path, const std::string& format) {
  if (format != "auto")
    return format;
  auto has = [&](const char* s) { return path.find(s) != std::string::npos; };
  for (auto f : {"alpaca", "xsum", "boolq", "quac", "imdb"})
    if (has(f))
      return f;
  if (has(".csv"))
    return "imdb";
  if (has(".json") && !has(".jsonl"))
    return "alpaca";
  if (has(".txt"))
    return "text";
  throw config_error(fmt::format(
    "experiment.format: cannot tell the format of '{}'; set it to alpaca, xsum, boolq, quac, "
    "imdb or text",
    path));
}

std::vector<dataset_sample> load_dataset(const std::string& path, const std::string& format,
                                         int samples, uint64_t seed, const tokenizer& vocab,
                                         int max_prompt_tokens) {
  auto records = read_records(path, detect_format(path, format));
  std::vector<size_t> order(records.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  std::vector<dataset_sample> out;
  // A record whose prompt does not fit even without its passage is passed
  // over for the next one of the shuffle.
  std::string too_long;
  for (auto i : order) {
    if (out.size() >= size_t(samples))
      break;
    auto& r = records[i];
    bool fits = true;
    std::string passage = r.passage;
    std::string prompt = r.before + passage + r.after;
    // Shorten the passage until the prompt fits (BOS included).
    while (int(vocab.encode(prompt).size()) > max_prompt_tokens) {
      auto cut = passage.find_last_of(" \n", passage.size() > 1 ? passage.size() - 2 : 0);
      if (passage.empty() || cut == std::string::npos || cut == 0) {
        passage.clear();
        prompt = r.before + r.after;
        if (int(vocab.encode(prompt).size()) > max_prompt_tokens) {
          fits = false;
          if (too_long.empty())
            too_long = fmt::format("{}: record {}: even without its passage the prompt exceeds "
                                   "{} tokens", path, r.index, max_prompt_tokens);
        }
        break;
      }
      // Drop about a tenth of what is left at once: long documents converge fast.
      size_t keep = std::max<size_t>(1, std::min(cut, passage.size() * 9 / 10));
      auto space = passage.find_last_of(" \n", keep);
      passage = passage.substr(0, space == std::string::npos ? keep : space);
      prompt = r.before + passage + r.after;
    }
    if (fits)
      out.push_back({r.index, prompt, r.reference});
  }
  if (out.empty() && !too_long.empty())
    throw config_error(too_long + ", as every record does");
  return out;
}

} // namespace ceco::app
