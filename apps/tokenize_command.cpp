// ceco tokenize: the token ids (or pieces) a model's vocabulary gives a text,
// for when a prompt behaves oddly. Reads only the vocabulary, so it works on
// vocabulary-only GGUF files too.
//
//   ceco tokenize --model M --text "Hello world"
//   ceco tokenize --model M --file prompt.txt --pieces --no-special

#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/commands.hpp"
#include "model/config.hpp"
#include "model/loader.hpp"

namespace ceco::app {

namespace {

struct tokenize_args {
  std::string model;
  std::string tokenizer;
  std::string text;
  std::string file;
  bool pieces = false;
  bool no_special = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw model_error(fmt::format("--file {}: cannot open it (no such file, or unreadable)", path));
  return {std::istreambuf_iterator<char>(in), {}};
}

void run_tokenize(const tokenize_args& a, bool has_text) {
  if (!has_text && a.file.empty())
    throw model_error("tokenize needs the text: --text TEXT or --file PATH");
  auto text = has_text ? a.text : read_text(a.file);
  auto vocab = load_tokenizer(a.model.empty() ? default_model_path() : a.model, a.tokenizer);
  auto ids = vocab.encode(text, !a.no_special, !a.no_special);
  if (!a.pieces) {
    fmt::print("{}\n", fmt::join(ids, " "));
    return;
  }
  std::vector<std::string> quoted;
  quoted.reserve(ids.size());
  for (auto id : ids)
    quoted.push_back(fmt::format("{:?}", vocab.token_text(id)));
  fmt::print("{}\n", fmt::join(quoted, " "));
}

} // namespace

void add_tokenize_command(CLI::App& app) {
  auto a = std::make_shared<tokenize_args>();
  auto* cmd = app.add_subcommand(
    "tokenize",
    "print the token ids a model's vocabulary gives a text, on one line (reads only the "
    "vocabulary: a vocabulary-only GGUF will do)");
  cmd->add_option("--model", a->model,
                  "GGUF file, llama2.c .bin, Hugging Face folder (config.json, *.safetensors, "
                  "tokenizer.json) or a folder holding one "
                  "(default: $CECO_MODEL, else "
                  "the built-in model)");
  cmd->add_option("--tokenizer", a->tokenizer, "llama2.c tokenizer.bin for a .bin model");
  auto* text = cmd->add_option("--text", a->text, "the text to tokenize");
  cmd->add_option("--file", a->file, "tokenize this file's bytes instead")->excludes(text);
  cmd->add_flag("--pieces", a->pieces,
                "print each token as its quoted text (escaped; a byte token that is part of a "
                "UTF-8 character shows as \\xNN) instead of its id");
  cmd->add_flag("--no-special", a->no_special,
                "add no BOS/EOS and read special-token text such as <|endoftext|> as plain text "
                "(by default BOS/EOS follow the vocabulary's add_bos_token/add_eos_token and "
                "special-token text becomes its token)");
  cmd->callback([a, text] { run_tokenize(*a, text->count() > 0); });
}

} // namespace ceco::app
