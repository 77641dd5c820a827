// The layers of ARCHITECTURE.md, checked on the sources: a lower layer never
// includes a higher one, the protocol (proto/) and the wire (net/) never
// include CAF or torch, and the wire sees only the protocol.

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct include_line {
  std::string file;  // relative to the source folder
  int line = 0;
  std::string target;  // what is between the quotes or brackets
  bool angled = false;
};

std::vector<include_line> includes_of(const std::string& folder) {
  std::vector<include_line> out;
  const fs::path root(CECO_SOURCE_DIR);
  const std::regex include_re(R"(^\s*#\s*include\s*([<"])([^>"]+)[>"])");
  for (const auto& entry : fs::recursive_directory_iterator(root / folder)) {
    auto ext = entry.path().extension().string();
    if (!entry.is_regular_file() || (ext != ".hpp" && ext != ".cpp"))
      continue;
    std::ifstream in(entry.path());
    std::string text;
    int n = 0;
    while (std::getline(in, text)) {
      ++n;
      std::smatch m;
      if (std::regex_search(text, m, include_re))
        out.push_back({fs::relative(entry.path(), root).string(), n, m[2].str(), m[1].str() == "<"});
    }
  }
  return out;
}

std::string top_folder(const std::string& include) {
  auto slash = include.find('/');
  return slash == std::string::npos ? std::string() : include.substr(0, slash);
}

/// Every project include of `folder` that names a folder outside `allowed`,
/// and every system include starting with one of `banned`, as "file:line: include".
std::vector<std::string> violations(const std::string& folder, const std::set<std::string>& allowed,
                                    const std::vector<std::string>& banned,
                                    const std::set<std::string>& allowed_files = {}) {
  std::vector<std::string> bad;
  for (const auto& inc : includes_of(folder)) {
    const auto where = inc.file + ":" + std::to_string(inc.line) + ": " + inc.target;
    if (inc.angled) {
      for (const auto& prefix : banned)
        if (inc.target.rfind(prefix, 0) == 0)
          bad.push_back(where);
      continue;
    }
    if (allowed_files.count(inc.target))
      continue;
    auto top = top_folder(inc.target);
    if (!top.empty() && !allowed.count(top))
      bad.push_back(where);
  }
  return bad;
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines)
    out += l + "\n";
  return out;
}

} // namespace

TEST_CASE("layers: the protocol is plain data, the wire depends on the protocol alone") {
  // proto/: no CAF, no torch, nothing of the layers above; fp16 conversion
  // is the one helper it shares with the model.
  auto proto = violations("proto", {"proto"}, {"caf/", "torch/", "ATen/", "c10/"},
                          {"model/half.hpp"});
  CHECK_MESSAGE(proto.empty(), join(proto));
  CHECK(!includes_of("proto").empty());  // the folder is there and read
  auto net = violations("net", {"net", "proto"}, {"caf/", "torch/", "ATen/", "c10/"});
  CHECK_MESSAGE(net.empty(), join(net));
  CHECK(!includes_of("net").empty());
}

TEST_CASE("layers: a lower layer never includes a higher one") {
  // model/ is the bottom; config/ sits beside actors/ and below apps/.
  auto model = violations("model", {"model"}, {});
  CHECK_MESSAGE(model.empty(), join(model));
  auto config = violations("config", {"config", "model"}, {});
  CHECK_MESSAGE(config.empty(), join(config));
  auto actors = violations("actors", {"actors", "model", "config", "proto", "net"}, {});
  CHECK_MESSAGE(actors.empty(), join(actors));
}

TEST_CASE("test names: none holds a semicolon, which would split it into two CTest tests that run nothing") {
  // doctest_discover_tests hands each name to CMake as a list element: a ';'
  // cuts it in two, and neither half names a test case, so both "pass".
  const std::regex name_re(R"re(TEST_CASE\("([^"]*)")re");
  int names = 0;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(CECO_SOURCE_DIR) / "test")) {
    if (!entry.is_regular_file() || entry.path().extension() != ".cpp")
      continue;
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      std::smatch m;
      if (!std::regex_search(line, m, name_re))
        continue;
      ++names;
      CHECK_MESSAGE(m[1].str().find(';') == std::string::npos,
                    entry.path().filename().string() << ": TEST_CASE(\"" << m[1].str() << "\")");
    }
  }
  CHECK(names > 200);
}
