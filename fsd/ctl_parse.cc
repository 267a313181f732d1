#include "fsd/ctl_parse.h"

#include <csignal>
#include <cstring>

namespace constellation {

Result<ParsedCtl> ParseCtl(std::string_view line, std::span<const VerbSpec> verbs) {
  auto usage = [&] {
    std::string u;
    for (const VerbSpec& v : verbs) u += (u.empty() ? "" : " | ") + std::string(v.usage);
    return u;
  };
  if (line.size() > kMaxCtlLineBytes) {
    return Status::InvalidArgument("ctl: line longer than " + std::to_string(kMaxCtlLineBytes) +
                                   " bytes");
  }
  std::vector<std::string> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) {
      if (words.size() > kMaxCtlArgs) return Status::InvalidArgument("ctl: too many arguments");
      words.emplace_back(line.substr(start, i - start));
    }
  }
  if (words.empty()) return Status::InvalidArgument("ctl: empty command; expected " + usage());
  for (const std::string& w : words) {
    for (char c : w) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        return Status::InvalidArgument("ctl: control character in command");
      }
    }
  }
  for (size_t v = 0; v < verbs.size(); ++v) {
    if (words[0] != verbs[v].word) continue;
    int argc = static_cast<int>(words.size()) - 1;
    if (argc < verbs[v].min_args || argc > verbs[v].max_args) {
      return Status::InvalidArgument("ctl: usage: " + std::string(verbs[v].usage));
    }
    ParsedCtl p;
    p.verb = v;
    p.args.assign(words.begin() + 1, words.end());
    return p;
  }
  std::string shown = words[0].substr(0, 64);
  return Status::InvalidArgument("ctl: unknown verb \"" + shown + "\"; expected " + usage());
}

Result<int> ParseSignal(std::string_view text) {
  if (!text.empty() && text.size() <= 2 && text[0] >= '1' && text[0] <= '9') {
    int n = 0;
    for (char c : text) {
      if (c < '0' || c > '9') {
        n = -1;
        break;
      }
      n = n * 10 + (c - '0');
    }
    if (n >= 1 && n <= 64) return n;
  }
  std::string_view name = text;
  if (name.substr(0, 3) == "SIG") name.remove_prefix(3);
  static const struct {
    const char* name;
    int number;
  } kSignals[] = {{"HUP", SIGHUP},   {"INT", SIGINT},    {"QUIT", SIGQUIT}, {"ABRT", SIGABRT},
                  {"KILL", SIGKILL}, {"USR1", SIGUSR1},  {"USR2", SIGUSR2}, {"PIPE", SIGPIPE},
                  {"ALRM", SIGALRM}, {"TERM", SIGTERM},  {"CONT", SIGCONT}, {"STOP", SIGSTOP},
                  {"TSTP", SIGTSTP}, {"WINCH", SIGWINCH}};
  for (const auto& s : kSignals) {
    if (name == s.name) return s.number;
  }
  return Status::InvalidArgument("ctl: \"" + std::string(text.substr(0, 32)) +
                                 "\" is not a signal (a name like TERM or SIGKILL, or 1..64)");
}

}  // namespace constellation
