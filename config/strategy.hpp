#pragma once

// The strategies of a response (docs/design.md §1): the enum, its one list
// of names, and what each needs. Settings (policy.mode,
// experiment.strategies), reports, the commands and the session driver all
// work with the enum; the names appear only here, in what users read and in
// results files.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ceco {

enum class strategy { cloud, naive, standalone, collaborative, speculative, exact };

/// Every strategy, in the order of the enum.
const std::vector<strategy>& all_strategies();
/// Every strategy's name, in the order of the enum.
const std::vector<std::string>& strategy_names();
/// "cloud", "naive", "standalone", "collaborative", "speculative", "exact".
const char* to_string(strategy s);
/// The strategy of a name; nullopt for anything else.
std::optional<strategy> parse_strategy(std::string_view name);
/// The strategy of a name, or a config_error naming `what` (a setting or a
/// flag) and every valid name.
strategy strategy_of(std::string_view name, std::string_view what);

/// Whether no token comes without the cloud (cloud, naive).
inline bool needs_cloud(strategy s) { return s == strategy::cloud || s == strategy::naive; }
/// Whether the edge's exits decide tokens (every strategy but cloud and naive).
inline bool uses_exits(strategy s) { return !needs_cloud(s); }
/// Whether the edge sends drafts for the cloud to verify (speculative, exact).
inline bool drafts(strategy s) { return s == strategy::speculative || s == strategy::exact; }
/// Whether the edge uploads each position's split state once and the cloud
/// catches up on them (collaborative, speculative, exact): the strategies
/// that keep the cloud's quality at the edge's speed.
inline bool uploads_split_states(strategy s) { return s == strategy::collaborative || drafts(s); }

} // namespace ceco
