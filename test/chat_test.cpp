// ceco chat driven through its stdin: a piped conversation, history kept
// and forgotten by /reset, /mode, bad commands and flags, and a reply given
// for each line as it comes (before the input ends).

#include "test/support.hpp"
#include "test/ceco_process.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sstream>
#include <string>
#include <vector>

using namespace ceco::test;

namespace {

/// `printf INPUT | ceco chat ARGS`: its stdout lines, and its stderr.
struct chat_run {
  int status = -1;
  std::vector<std::string> lines;
  std::string err;
};

chat_run chat(const std::string& input, const std::string& args) {
  temp_dir tmp;
  {
    std::ofstream(tmp.file("in")) << input;
  }
  auto r = run_shell("timeout 120 " + std::string(CECO_BINARY) + " chat --local-cloud " + args
                     + " < " + tmp.file("in") + " 2> " + tmp.file("err"));
  chat_run out;
  out.status = r.status;
  std::istringstream in(r.out);
  for (std::string l; std::getline(in, l);)
    out.lines.push_back(l);
  std::ifstream e(tmp.file("err"));
  out.err.assign(std::istreambuf_iterator<char>(e), {});
  return out;
}

} // namespace

TEST_CASE("ceco chat: each line is a turn, the history shapes the next reply, /reset forgets it, /quit ends") {
  const std::string args = "--max-tokens 12 --set link.latency_ms=0";
  auto fresh = chat("Let there be light\n", args);
  REQUIRE(fresh.status == 0);
  REQUIRE(fresh.lines.size() == 1);
  CHECK(fresh.lines[0].size() > 5);

  auto talk = chat("And God said\nLet there be light\n/reset\nLet there be light\n/quit\nAnd God said\n",
                   args);
  INFO(talk.err);
  REQUIRE(talk.status == 0);
  REQUIRE(talk.lines.size() == 4);
  // The second turn is answered with the first in its prompt: another reply
  // than the same words opening a conversation.
  CHECK(talk.lines[1] != fresh.lines[0]);
  CHECK(talk.lines[2] == "(the conversation is forgotten)");
  // After /reset it is a first turn again (greedy: the same reply).
  CHECK(talk.lines[3] == fresh.lines[0]);
  // /quit ended it: the last line was not answered. Figures per reply on stderr.
  size_t figures = 0;
  for (size_t at = 0; (at = talk.err.find("12 tokens", at)) != std::string::npos; ++at)
    ++figures;
  CHECK(figures == 3);
  CHECK(talk.err.find("chat template plain") != std::string::npos);
}

TEST_CASE("ceco chat: /mode changes the strategy of the next replies, a wrong one is refused naming the strategies") {
  auto r = chat("And God said\n/mode cloud\nAnd God said\n/mode bogus\n/help me\n", "--max-tokens 8");
  INFO(r.err);
  REQUIRE(r.status == 0);
  REQUIRE(r.lines.size() == 5);
  CHECK(r.lines[1] == "(mode cloud)");
  CHECK(r.err.find("8 tokens, 8 from the cloud, 0 degraded") != std::string::npos);
  CHECK(r.err.find("mode collaborative]") != std::string::npos);
  CHECK(r.err.find("mode cloud]") != std::string::npos);
  CHECK(r.lines[3].find("/mode bogus: not a strategy") != std::string::npos);
  CHECK(r.lines[3].find("speculative") != std::string::npos);
  CHECK(r.lines[4].find("/help me: not a command") != std::string::npos);

  auto bad = run_ceco("chat --local-cloud --mode bogus < /dev/null");
  CHECK(bad.status == 1);
  CHECK(bad.out.find("--mode bogus") != std::string::npos);
  auto template_flag = run_ceco("chat --local-cloud --chat-template nope < /dev/null");
  CHECK(template_flag.status == 1);
  CHECK(template_flag.out.find("--chat-template nope") != std::string::npos);
}

TEST_CASE("ceco chat answers each line as it comes, before its input ends") {
  temp_dir tmp;
  const auto fifo = tmp.file("in");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // O_RDWR: the open does not wait for the reader, and the input stays open.
  int w = ::open(fifo.c_str(), O_RDWR | O_CLOEXEC);  // not inherited: its close is the end
  REQUIRE(w >= 0);
  ceco_process p("chat --local-cloud -q --max-tokens 8 --set link.latency_ms=0 < " + fifo);
  const std::string first = "And God said\n";
  REQUIRE(::write(w, first.data(), first.size()) == ssize_t(first.size()));
  auto reply = p.line();  // the input is still open: only an answer per line gets here
  CHECK(reply.size() > 3);
  const std::string second = "/mode standalone\n";
  REQUIRE(::write(w, second.data(), second.size()) == ssize_t(second.size()));
  CHECK(p.line() == "(mode standalone)\n");
  ::close(w);  // the end of the input ends the chat
  CHECK(p.line() == "");
}
