#pragma once

// The tokens of a speculative or exact response and which of them are final
// (docs/design.md §5). The edge drafts tokens ahead of the cloud's verdicts;
// a token is final once every token before it that the cloud is to verify
// has been accepted. A correction replaces a draft with the cloud's token and
// drops everything after it. Plain bookkeeping: the session driver
// (actors/edge_session.cpp) does the messaging.
//
//   sequence   p0 p1 p2 | t3 t4 t5 t6 t7
//              prompt   | final ─┘  └ drafts (t5 awaits its verdict, t6 and t7
//                                   depend on it)

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ceco {

class draft_window {
public:
  /// Where a generated token came from: the index of the confident exit, or
  /// `uncertain` (the deepest exit's token drafted for the cloud to decide),
  /// or `cloud` (a correction).
  static constexpr int uncertain = -1;
  static constexpr int cloud = -2;

  draft_window() = default;
  explicit draft_window(std::vector<int32_t> prompt);

  /// Prompt and generated tokens, final ones first.
  const std::vector<int32_t>& sequence() const { return tokens_; }
  int32_t size() const { return int32_t(tokens_.size()); }
  int32_t prompt_size() const { return prompt_; }
  int32_t generated() const { return size() - prompt_; }
  /// sequence()[0, final_size()) is final.
  int32_t final_size() const;
  /// Tokens drafted after the last final one.
  int32_t unverified() const { return size() - final_size(); }
  /// Origin of the token at sequence index i (i >= prompt_size()).
  int origin(int32_t i) const { return origins_[size_t(i - prompt_)]; }

  /// Whether the token at sequence index `index` awaits the cloud's verdict.
  bool awaits_verdict(int32_t index) const;
  /// Appends the token after the last; `verify`: the cloud is to check it.
  void draft(int32_t token, int origin, bool verify);
  /// The cloud verified every draft up to sequence index `last`; returns
  /// how many drafts that accepted.
  int32_t accept(int32_t last);
  /// The draft at sequence index `index` was wrong: the cloud's `token`
  /// replaces it (final) and every later token is dropped. Returns how many
  /// drafted tokens were thrown away (the wrong one included).
  int32_t correct(int32_t index, int32_t token);
  /// The cloud is gone: every token becomes final unverified; uncertain
  /// drafts count as `fallback` (the deepest exit). Returns how many drafts
  /// never got a verdict.
  int32_t give_up(int fallback);

private:
  std::vector<int32_t> tokens_;
  std::vector<int> origins_;          // per generated token
  std::vector<int32_t> to_verify_;    // sequence indices awaiting a verdict, ascending
  int32_t prompt_ = 0;
};

} // namespace ceco
