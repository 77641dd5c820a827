#pragma once

// The pre-tokenizer splits of byte-level BPE vocabularies, named by GGUF's
// `tokenizer.ggml.pre`. Text is cut into words that BPE merges never cross.
// Each split is a sequence of passes, as in the reference implementation
// (llama.cpp): every pass cuts each piece of the previous pass at the matches
// of one pattern, the text between matches staying a piece of its own, and a
// pattern sees only its piece (so "(?!\S)" and "$" see the piece's end).
// The patterns are matched by hand over code points:
//
//  gpt-2, mpt, gpt-neox, olmo (and no value):
//    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//  llama-bpe (Llama 3), qwen2 (the same with \p{N} instead of \p{N}{1,3}):
//    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//  starcoder, smollm, refact:  \p{N}  then gpt-2
//  falcon:  [\p{P}$+<=>^~|`]+  then gpt-2  then [0-9][0-9][0-9]
//  deepseek-llm:  [\r\n]  \s?[cased letters]+  \s?[ASCII and fullwidth punctuation]+
//                 \s+$  [CJK]+  \p{N}+
//  deepseek-coder:  [\r\n]  \s?\p{L}+  \s?\p{P}+  [CJK]+  \p{N}
//
// Any other name is refused (model_error listing the known ones), as the
// reference does: a wrong split gives valid-looking but wrong token ids.

#include <string>
#include <string_view>
#include <vector>

namespace ceco {

enum class pre_split { gpt2, llama3, qwen2, starcoder, falcon, deepseek_llm, deepseek_coder };

/// The split for a `tokenizer.ggml.pre` value ("" and "default" mean gpt-2);
/// `source` names the file in the error.
pre_split pre_split_from_name(const std::string& name, const std::string& source);
/// The names pre_split_from_name accepts, comma-separated.
std::string known_pre_split_names();

/// Whether BPE keeps a whole word that is itself a token instead of merging
/// it (Llama 3's tokenizer.json sets `ignore_merges`).
bool pre_split_ignores_merges(const std::string& name);

/// `text` cut into words; they concatenate back to `text` byte for byte
/// (invalid UTF-8 bytes are kept, each one a non-letter code point).
std::vector<std::string_view> pre_tokenize(pre_split split, std::string_view text);

} // namespace ceco
