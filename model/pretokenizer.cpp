#include "model/pretokenizer.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/unicode.hpp"

namespace ceco {

namespace {

using unicode::cpt_class;

struct name_entry {
  const char* name;
  pre_split split;
  bool ignore_merges;
};

// The tokenizer.ggml.pre values the reference maps to each split.
constexpr name_entry known_names[] = {
  {"gpt-2", pre_split::gpt2, false},         {"mpt", pre_split::gpt2, false},
  {"gpt-neox", pre_split::gpt2, false},      {"olmo", pre_split::gpt2, false},
  {"phi-2", pre_split::gpt2, false},         {"jais", pre_split::gpt2, false},
  {"llama-bpe", pre_split::llama3, true},    {"llama3", pre_split::llama3, true},
  {"llama-v3", pre_split::llama3, true},     {"falcon3", pre_split::llama3, true},
  {"dbrx", pre_split::llama3, false},        {"smaug-bpe", pre_split::llama3, false},
  {"qwen2", pre_split::qwen2, false},        {"deepseek-r1-qwen", pre_split::qwen2, false},
  {"stablelm2", pre_split::qwen2, false},    {"megrez", pre_split::qwen2, false},
  {"starcoder", pre_split::starcoder, false}, {"smollm", pre_split::starcoder, false},
  {"refact", pre_split::starcoder, false},   {"command-r", pre_split::starcoder, false},
  {"codeshell", pre_split::starcoder, false}, {"exaone", pre_split::starcoder, false},
  {"falcon", pre_split::falcon, false},      {"deepseek-llm", pre_split::deepseek_llm, false},
  {"deepseek-coder", pre_split::deepseek_coder, false},
};

const name_entry* find_name(const std::string& name) {
  for (const auto& e : known_names)
    if (name == e.name)
      return &e;
  return nullptr;
}

// -- the text being split -------------------------------------------------------

struct text_view {
  std::vector<uint32_t> cpts;
  std::vector<cpt_class> cls;

  bool is(size_t i, cpt_class c) const { return cls[i] == c; }
  bool space(size_t i) const { return cls[i] == cpt_class::whitespace; }
  bool letter(size_t i) const { return cls[i] == cpt_class::letter; }
  bool number(size_t i) const { return cls[i] == cpt_class::number; }
  bool letter_or_number(size_t i) const { return letter(i) || number(i); }
  // [^\s\p{L}\p{N}]
  bool other(size_t i) const { return !space(i) && !letter_or_number(i); }
  bool cr_or_lf(size_t i) const { return cpts[i] == '\r' || cpts[i] == '\n'; }
};

using piece = std::pair<size_t, size_t>;  // [begin, end) in code points

/// One pass over every piece: `match(v, pos, end)` is the length of the
/// pattern's match starting at `pos` (0: none there). Matches are taken
/// leftmost first, without overlap; the text between them stays a piece.
template <class Match>
std::vector<piece> cut(const text_view& v, const std::vector<piece>& pieces, Match match) {
  std::vector<piece> out;
  out.reserve(pieces.size() * 2);
  for (auto [begin, end] : pieces) {
    size_t gap = begin;
    for (size_t pos = begin; pos < end;) {
      size_t len = match(v, pos, end);
      if (len == 0) {
        ++pos;
        continue;
      }
      if (gap < pos)
        out.emplace_back(gap, pos);
      out.emplace_back(pos, pos + len);
      pos += len;
      gap = pos;
    }
    if (gap < end)
      out.emplace_back(gap, end);
  }
  return out;
}

template <class Pred>
size_t run_from(size_t pos, size_t end, Pred pred) {
  size_t i = pos;
  while (i < end && pred(i))
    ++i;
  return i - pos;
}

char ascii_lower(uint32_t c) {
  return c < 0x80 ? char(c >= 'A' && c <= 'Z' ? c + 32 : c) : '\0';
}

/// 's|'t|'re|'ve|'m|'ll|'d, case-insensitive when `any_case`: the length or 0.
size_t contraction(const text_view& v, size_t pos, size_t end, bool any_case) {
  if (v.cpts[pos] != '\'' || pos + 1 >= end)
    return 0;
  auto at = [&](size_t i) {
    return any_case ? ascii_lower(v.cpts[i]) : (v.cpts[i] < 0x80 ? char(v.cpts[i]) : '\0');
  };
  char a = at(pos + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd')
    return 2;
  if (pos + 2 < end) {
    char b = at(pos + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
      return 3;
  }
  return 0;
}

/// \s+(?!\S)|\s+ at a whitespace run: a run that a non-space follows gives
/// its last whitespace to the next word (" world").
size_t whitespace_run(const text_view& v, size_t pos, size_t end) {
  size_t n = run_from(pos, end, [&](size_t i) { return v.space(i); });
  if (n > 1 && pos + n < end)
    return n - 1;
  return n;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
size_t match_gpt2(const text_view& v, size_t pos, size_t end) {
  if (size_t n = contraction(v, pos, end, false))
    return n;
  size_t start = pos;
  if (v.cpts[pos] == ' ' && pos + 1 < end && !v.space(pos + 1))
    ++pos;  // " ?" before a letter, number or other
  if (v.letter(pos))
    return pos - start + run_from(pos, end, [&](size_t i) { return v.letter(i); });
  if (v.number(pos))
    return pos - start + run_from(pos, end, [&](size_t i) { return v.number(i); });
  if (v.other(pos))
    return pos - start + run_from(pos, end, [&](size_t i) { return v.other(i); });
  return whitespace_run(v, start, end);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t match_llama3(const text_view& v, size_t pos, size_t end, size_t max_digits) {
  if (size_t n = contraction(v, pos, end, true))
    return n;
  if (!v.cr_or_lf(pos) && !v.number(pos)
      && (v.letter(pos) || (pos + 1 < end && v.letter(pos + 1))))
    return 1 + run_from(pos + 1, end, [&](size_t i) { return v.letter(i); });
  if (v.number(pos))
    return std::min(max_digits, run_from(pos, end, [&](size_t i) { return v.number(i); }));
  size_t start = pos;
  if (v.cpts[pos] == ' ' && pos + 1 < end && v.other(pos + 1))
    ++pos;
  if (v.other(pos)) {
    pos += run_from(pos, end, [&](size_t i) { return v.other(i); });
    pos += run_from(pos, end, [&](size_t i) { return v.cr_or_lf(i); });
    return pos - start;
  }
  // A whitespace run: up to its last \r or \n if it has one.
  size_t n = run_from(start, end, [&](size_t i) { return v.space(i); });
  for (size_t i = start + n; i > start; --i)
    if (v.cr_or_lf(i - 1))
      return i - start;
  return whitespace_run(v, start, end);
}

// The DeepSeek LLM letter class: the cased letters (Lu, Ll, Lt) of its
// tokenizer.json pattern, as inclusive code point ranges.
constexpr std::pair<uint32_t, uint32_t> deepseek_letters[] = {
  {0x41, 0x5A},       {0x61, 0x7A},       {0xB5, 0xB5},       {0xC0, 0xD6},
  {0xD8, 0xF6},       {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},
  {0x295, 0x2AF},     {0x370, 0x373},     {0x376, 0x377},     {0x37B, 0x37D},
  {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},
  {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},
  {0x531, 0x556},     {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
  {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
  {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
  {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
  {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
  {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
  {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
  {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
  {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
  {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
  {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
  {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
  {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
  {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
  {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
  {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

// [!-/:-~！-／：-～‘-‟　-。]
constexpr std::pair<uint32_t, uint32_t> deepseek_punctuation[] = {
  {0x21, 0x2F}, {0x3A, 0x7E}, {0x2018, 0x201F}, {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E},
};

// [一-龥ࠀ-一가-퟿]
constexpr std::pair<uint32_t, uint32_t> deepseek_cjk[] = {
  {0x800, 0x4E00}, {0x4E00, 0x9FA5}, {0xAC00, 0xD7FF},
};

template <size_t N>
bool in_ranges(const std::pair<uint32_t, uint32_t> (&ranges)[N], uint32_t c) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                             [](uint32_t x, const auto& r) { return x < r.first; });
  return it != std::begin(ranges) && c <= std::prev(it)->second;
}

/// The reference matches explicit code point classes against the text with
/// whitespace above U+007F replaced by U+000B, so U+3000 is a space there and
/// never punctuation.
uint32_t as_matched(const text_view& v, size_t i) {
  return v.cpts[i] > 0x7F && v.space(i) ? 0x0B : v.cpts[i];
}

/// \s?X+ where X is `pred`.
template <class Pred>
size_t optional_space_then_run(const text_view& v, size_t pos, size_t end, Pred pred) {
  size_t start = pos;
  if (v.space(pos) && pos + 1 < end && pred(pos + 1))
    ++pos;
  size_t n = run_from(pos, end, pred);
  return n == 0 ? 0 : pos - start + n;
}

/// \s+$ : the piece's trailing whitespace.
std::vector<piece> cut_trailing_space(const text_view& v, const std::vector<piece>& pieces) {
  std::vector<piece> out;
  out.reserve(pieces.size() + 1);
  for (auto [begin, end] : pieces) {
    size_t tail = end;
    while (tail > begin && v.space(tail - 1))
      --tail;
    if (tail > begin)
      out.emplace_back(begin, tail);
    if (tail < end)
      out.emplace_back(tail, end);
  }
  return out;
}

std::vector<piece> split_pieces(pre_split split, const text_view& v) {
  std::vector<piece> p{{0, v.cpts.size()}};
  auto gpt2 = [](const text_view& t, size_t pos, size_t end) { return match_gpt2(t, pos, end); };
  auto single = [](auto pred) {
    return [pred](const text_view& t, size_t pos, size_t) -> size_t { return pred(t, pos) ? 1 : 0; };
  };
  auto run = [](auto pred) {
    return [pred](const text_view& t, size_t pos, size_t end) -> size_t {
      return run_from(pos, end, [&](size_t i) { return pred(t, i); });
    };
  };
  auto is_number = [](const text_view& t, size_t i) { return t.number(i); };
  auto is_cr_lf = [](const text_view& t, size_t i) { return t.cr_or_lf(i); };
  auto is_cjk = [](const text_view& t, size_t i) { return in_ranges(deepseek_cjk, as_matched(t, i)); };

  switch (split) {
    case pre_split::gpt2:
      return cut(v, p, gpt2);
    case pre_split::llama3:
    case pre_split::qwen2: {
      size_t digits = split == pre_split::llama3 ? 3 : 1;
      return cut(v, p, [digits](const text_view& t, size_t pos, size_t end) {
        return match_llama3(t, pos, end, digits);
      });
    }
    case pre_split::starcoder:
      p = cut(v, p, single(is_number));
      return cut(v, p, gpt2);
    case pre_split::falcon:
      p = cut(v, p, run([](const text_view& t, size_t i) {
        switch (t.cpts[i]) {
          case '$': case '+': case '<': case '=': case '>': case '^': case '~': case '|': case '`':
            return true;
          default:
            return t.is(i, cpt_class::punctuation);
        }
      }));
      p = cut(v, p, gpt2);
      return cut(v, p, [](const text_view& t, size_t pos, size_t end) -> size_t {
        auto digit = [&](size_t i) { return i < end && t.cpts[i] >= '0' && t.cpts[i] <= '9'; };
        return digit(pos) && digit(pos + 1) && digit(pos + 2) ? 3 : 0;
      });
    case pre_split::deepseek_llm:
      p = cut(v, p, single(is_cr_lf));
      p = cut(v, p, [](const text_view& t, size_t pos, size_t end) {
        return optional_space_then_run(t, pos, end, [&](size_t i) {
          return in_ranges(deepseek_letters, as_matched(t, i));
        });
      });
      p = cut(v, p, [](const text_view& t, size_t pos, size_t end) {
        return optional_space_then_run(t, pos, end, [&](size_t i) {
          return in_ranges(deepseek_punctuation, as_matched(t, i));
        });
      });
      p = cut_trailing_space(v, p);
      p = cut(v, p, run(is_cjk));
      return cut(v, p, run(is_number));
    case pre_split::deepseek_coder:
      p = cut(v, p, single(is_cr_lf));
      p = cut(v, p, [](const text_view& t, size_t pos, size_t end) {
        return optional_space_then_run(t, pos, end, [&](size_t i) { return t.letter(i); });
      });
      p = cut(v, p, [](const text_view& t, size_t pos, size_t end) {
        return optional_space_then_run(t, pos, end,
                                       [&](size_t i) { return t.is(i, cpt_class::punctuation); });
      });
      p = cut(v, p, run(is_cjk));
      return cut(v, p, single(is_number));
  }
  return p;
}

} // namespace

pre_split pre_split_from_name(const std::string& name, const std::string& source) {
  if (name.empty() || name == "default")
    return pre_split::gpt2;
  if (const auto* e = find_name(name))
    return e->split;
  throw model_error(fmt::format(
    "{}: tokenizer.ggml.pre is '{}', a pre-tokenizer ceco does not know (known: {})", source,
    name, known_pre_split_names()));
}

std::string known_pre_split_names() {
  std::string out;
  for (const auto& e : known_names)
    out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

bool pre_split_ignores_merges(const std::string& name) {
  const auto* e = find_name(name);
  return e && e->ignore_merges;
}

std::vector<std::string_view> pre_tokenize(pre_split split, std::string_view text) {
  auto decoded = unicode::decode_utf8(text);
  text_view v;
  v.cpts = std::move(decoded.cpts);
  v.cls.resize(v.cpts.size());
  std::transform(v.cpts.begin(), v.cpts.end(), v.cls.begin(), unicode::classify);
  std::vector<std::string_view> words;
  if (v.cpts.empty())
    return words;
  auto pieces = split_pieces(split, v);
  words.reserve(pieces.size());
  for (auto [begin, end] : pieces)
    words.push_back(text.substr(decoded.offsets[begin], decoded.offsets[end] - decoded.offsets[begin]));
  return words;
}

} // namespace ceco
