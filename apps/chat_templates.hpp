#pragma once

// Chat prompts: the built-in templates that turn a conversation into the
// text a model was tuned on, and recognising which one a GGUF's
// `tokenizer.chat_template` (a Jinja template ceco does not run) is.
//
//   chatml    <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n
//   llama-2   [INST] <<SYS>>\nsys\n<</SYS>>\n\nHi [/INST]            (BOS from the tokenizer)
//   llama-3   <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>...assistant...\n\n
//   zephyr    <|user|>\nHi</s>\n<|assistant|>\n
//   plain     User: Hi\nAssistant:                                    (models without a template)

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ceco {
class tokenizer;
}

namespace ceco::app {

struct chat_message {
  std::string role;  // system, user or assistant
  std::string content;
};

enum class chat_format { chatml, llama2, llama3, zephyr, plain };

/// "chatml", "llama-2", "llama-3", "zephyr", "plain"; nullopt for anything else.
std::optional<chat_format> parse_chat_format(std::string_view name);
const char* to_string(chat_format f);
/// The names parse_chat_format accepts, comma-separated.
std::string chat_format_names();

/// Which built-in template `jinja` (a GGUF's tokenizer.chat_template) is, by
/// the markers each writes; nullopt when it is empty or none matches.
std::optional<chat_format> recognise_chat_template(std::string_view jinja);

/// The prompt text of `messages`, ending where the assistant's reply starts.
/// Special markers are text here; encode it with special tokens parsed.
std::string render_chat(chat_format f, const std::vector<chat_message>& messages);

/// The markers of `f` that its models hold as special tokens (chatml's
/// "<|im_start|>", llama-3's "<|eot_id|>", "</s>") which `vocab` lacks as
/// one special token each: with them the template turns into plain text.
std::vector<std::string> missing_chat_markers(chat_format f, const tokenizer& vocab);

/// Text that ends the assistant's turn in `f` (besides the model's EOS).
std::vector<std::string> chat_stop_strings(chat_format f);

} // namespace ceco::app
