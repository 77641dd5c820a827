#include "apps/chat_templates.hpp"

#include <fmt/format.h>

#include "model/tokenizer.hpp"

namespace ceco::app {

namespace {

constexpr chat_format all_formats[] = {chat_format::chatml, chat_format::llama2,
                                       chat_format::llama3, chat_format::zephyr,
                                       chat_format::plain};

bool contains(std::string_view text, std::string_view what) {
  return text.find(what) != std::string_view::npos;
}

std::string render_llama2(const std::vector<chat_message>& messages) {
  // [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]
  std::string out, system;
  bool open_turn = false;  // an [INST] without its reply yet
  for (auto& m : messages) {
    if (m.role == "system") {
      system += (system.empty() ? "" : "\n") + m.content;
    } else if (m.role == "assistant") {
      out += " " + m.content + " </s>";
      open_turn = false;
    } else {
      if (!out.empty())
        out += "<s>";
      out += "[INST] ";
      if (!system.empty()) {
        out += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
        system.clear();
      }
      out += m.content + " [/INST]";
      open_turn = true;
    }
  }
  if (!open_turn && !system.empty())  // a system message alone
    out += "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n [/INST]";
  return out;
}

std::string capitalised(const std::string& role) {
  if (role.empty())
    return role;
  std::string out = role;
  if (out[0] >= 'a' && out[0] <= 'z')
    out[0] = char(out[0] - 'a' + 'A');
  return out;
}

} // namespace

std::optional<chat_format> parse_chat_format(std::string_view name) {
  for (auto f : all_formats)
    if (name == to_string(f))
      return f;
  return std::nullopt;
}

const char* to_string(chat_format f) {
  switch (f) {
    case chat_format::chatml: return "chatml";
    case chat_format::llama2: return "llama-2";
    case chat_format::llama3: return "llama-3";
    case chat_format::zephyr: return "zephyr";
    case chat_format::plain: return "plain";
  }
  return "unknown";
}

std::string chat_format_names() {
  std::string out;
  for (auto f : all_formats)
    out += (out.empty() ? "" : ", ") + std::string(to_string(f));
  return out;
}

std::optional<chat_format> recognise_chat_template(std::string_view jinja) {
  if (contains(jinja, "<|im_start|>"))
    return chat_format::chatml;
  if (contains(jinja, "<|start_header_id|>"))
    return chat_format::llama3;
  // Phi-3 writes zephyr's role markers but ends a turn with <|end|>, not
  // </s>: zephyr's rendering would be another format than it was tuned on.
  if (contains(jinja, "<|user|>") && contains(jinja, "<|assistant|>")
      && !contains(jinja, "<|end|>"))
    return chat_format::zephyr;
  if (contains(jinja, "[INST]"))
    return chat_format::llama2;
  return std::nullopt;
}

std::string render_chat(chat_format f, const std::vector<chat_message>& messages) {
  std::string out;
  switch (f) {
    case chat_format::chatml:
      for (auto& m : messages)
        out += fmt::format("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
      return out + "<|im_start|>assistant\n";
    case chat_format::llama2:
      return render_llama2(messages);
    case chat_format::llama3:
      for (auto& m : messages)
        out += fmt::format("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", m.role,
                           m.content);
      return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case chat_format::zephyr:
      for (auto& m : messages)
        out += fmt::format("<|{}|>\n{}</s>\n", m.role, m.content);
      return out + "<|assistant|>\n";
    case chat_format::plain:
      for (auto& m : messages)
        out += fmt::format("{}: {}\n", capitalised(m.role), m.content);
      return out + "Assistant:";
  }
  return out;
}

std::vector<std::string> missing_chat_markers(chat_format f, const tokenizer& vocab) {
  std::vector<std::string> markers;
  switch (f) {
    case chat_format::chatml: markers = {"<|im_start|>", "<|im_end|>"}; break;
    case chat_format::llama3:
      markers = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
      break;
    case chat_format::llama2:
    case chat_format::zephyr: markers = {"</s>"}; break;
    case chat_format::plain: break;
  }
  std::vector<std::string> missing;
  for (auto& marker : markers) {
    auto ids = vocab.encode(marker, false, true);
    const bool special = ids.size() == 1 && (vocab.kind(ids[0]) == token_kind::control ||
                                             vocab.kind(ids[0]) == token_kind::user_defined);
    if (!special)
      missing.push_back(marker);
  }
  return missing;
}

std::vector<std::string> chat_stop_strings(chat_format f) {
  switch (f) {
    case chat_format::chatml: return {"<|im_end|>"};
    case chat_format::llama2: return {"</s>"};
    case chat_format::llama3: return {"<|eot_id|>"};
    case chat_format::zephyr: return {"</s>"};
    case chat_format::plain: return {"\nUser:"};
  }
  return {};
}

} // namespace ceco::app
