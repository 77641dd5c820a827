#include "test/support.hpp"

#include <fstream>

#include "apps/datasets.hpp"

using namespace ceco;
using namespace ceco::test;
using ceco::app::detect_format;
using ceco::app::load_dataset;

TEST_CASE("every shared dataset turns into prompts that fit and references by its template") {
  const auto& vocab = load_stories("gguf").files.vocab;
  struct case_ {
    const char* file;
    const char* format;
    const char* tail;  // how every prompt ends
  };
  for (auto c : {case_{"/data/alpaca_en_demo/alpaca_en_demo.json", "alpaca", "\n"},
                 case_{"/data/xsum/test-tiny.jsonl", "xsum", "\nSummary:"},
                 case_{"/data/boolq/dev-tiny.jsonl", "boolq", "?\nAnswer:"},
                 case_{"/data/quac/test-tiny.jsonl", "quac", "\nAnswer:"},
                 case_{"/data/imdb/sample.csv", "imdb", "\nSentiment:"},
                 case_{"/data/tinyshakespeare/input.txt", "text", ""}}) {
    auto path = shared_dir() + c.file;
    CAPTURE(path);
    CHECK(detect_format(path, "auto") == c.format);
    auto samples = load_dataset(path, "auto", 6, 1, vocab, 300);
    REQUIRE(samples.size() == 6);
    for (auto& s : samples) {
      CHECK(vocab.encode(s.prompt).size() <= 300);
      CHECK(s.prompt.size() >= std::string(c.tail).size());
      CHECK(s.prompt.compare(s.prompt.size() - std::string(c.tail).size(), std::string::npos, c.tail) == 0);
      CHECK(!s.reference.empty());
      if (std::string(c.format) == "boolq")
        CHECK((s.reference == "yes" || s.reference == "no"));
      if (std::string(c.format) == "imdb")
        CHECK((s.reference == "positive" || s.reference == "negative"));
    }
    // The same seed draws the same records; another seed others.
    CHECK(load_dataset(path, "auto", 6, 1, vocab, 300)[0].index == samples[0].index);
  }
}

TEST_CASE("dataset errors name the file and the problem") {
  const auto& vocab = load_stories("gguf").files.vocab;
  temp_dir tmp;
  auto csv = tmp.file("reviews.csv");
  std::ofstream(csv) << "text,label\n\"A \"\"fine\"\", long\nfilm\",1\nbad,0\n";
  auto s = load_dataset(csv, "imdb", 5, 1, vocab, 200);
  REQUIRE(s.size() == 2);
  bool quoted = false;
  for (auto& x : s)
    quoted = quoted || x.prompt == "Review: A \"fine\", long\nfilm\nSentiment:";
  CHECK(quoted);
  auto bad = tmp.file("bad.jsonl");
  std::ofstream(bad) << "{\"document\": \"x\"}\n";
  CHECK(error_of([&] { load_dataset(bad, "xsum", 1, 1, vocab, 200); }).find("has no field 'summary'") != std::string::npos);
  auto broken = tmp.file("broken.jsonl");
  std::ofstream(broken) << "{\"document\": \n";
  CHECK(error_of([&] { load_dataset(broken, "xsum", 1, 1, vocab, 200); }).find("broken.jsonl:1: not JSON") != std::string::npos);
  CHECK(error_of([&] { detect_format(tmp.file("data.bin"), "auto"); }).find("cannot tell the format") != std::string::npos);
}
