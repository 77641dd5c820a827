#pragma once

// Code points for the byte-level BPE pre-tokenizers: UTF-8 decoding that
// keeps invalid bytes, a compact class table (letter = \p{L}, number =
// \p{N}, punctuation = \p{P}, whitespace = Unicode White_Space), and GPT-2's
// byte <-> printable code point map.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ceco::unicode {

enum class cpt_class : uint8_t { other, letter, number, punctuation, whitespace };

/// The class of a code point; whitespace wins over the general category
/// (U+0085 is a control character and White_Space). Unassigned code points
/// and invalid bytes are `other`.
cpt_class classify(uint32_t cpt);

/// What an invalid UTF-8 byte decodes to (U+FFFD's class, `other`).
inline constexpr uint32_t invalid_cpt = 0xFFFD;

/// Code points of `text` with the byte offset of each: offsets[i] is where
/// cpts[i] starts, offsets[cpts.size()] == text.size(). A byte that does not
/// start a valid sequence becomes one `invalid_cpt`, so a slice of code
/// points always maps back to the exact original bytes.
struct code_points {
  std::vector<uint32_t> cpts;
  std::vector<size_t> offsets;
};
code_points decode_utf8(std::string_view text);

/// Appends the UTF-8 encoding of `cpt`.
void append_utf8(std::string& out, uint32_t cpt);

/// `s` with every `from` replaced by `to`, left to right (SentencePiece's
/// "▁" for a space).
std::string replace_all(std::string s, std::string_view from, std::string_view to);

/// GPT-2's byte-level alphabet: every byte as a printable code point
/// ('!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves, the other 68 bytes
/// for U+0100.. in byte order), UTF-8 encoded.
const std::string& byte_to_piece(uint8_t byte);
/// The byte a code point of that alphabet stands for, or -1.
int piece_cpt_to_byte(uint32_t cpt);

} // namespace ceco::unicode
