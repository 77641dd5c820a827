#pragma once

// Datasets for experiments, each record turned into a prompt and a
// reference answer by a fixed template (README "Datasets"):
//   alpaca  {instruction, input, output}   "<instruction>\n<input>\n"         -> output
//   xsum    {document, summary}            "<document>\nSummary:"             -> summary
//   boolq   {passage, question, answer}    "<passage>\nQuestion: <q>?\nAnswer:" -> yes / no
//   quac    {passage, question, answer}    "<passage>\nQuestion: <q1>\nAnswer:" -> first answer to q1
//   imdb    CSV text,label                 "Review: <text>\nSentiment:"       -> positive / negative
//   text    plain text, paragraphs         first half of a paragraph          -> its second half
// A passage is cut, word by word from its end, until the prompt fits the
// model's context with room for the answer.

#include <cstdint>
#include <string>
#include <vector>

namespace ceco {
class tokenizer;
}

namespace ceco::app {

struct dataset_sample {
  size_t index = 0;  // record number in the file
  std::string prompt;
  std::string reference;
};

/// "auto" picks the format from the file name and contents.
std::string detect_format(const std::string& path, const std::string& format);

/// `samples` records drawn by a seeded shuffle; prompts fit in
/// `max_prompt_tokens` tokens of `vocab` (a passage is shortened; a record
/// too long without it is passed over for the next of the shuffle).
std::vector<dataset_sample> load_dataset(const std::string& path, const std::string& format,
                                         int samples, uint64_t seed, const tokenizer& vocab,
                                         int max_prompt_tokens);

} // namespace ceco::app
