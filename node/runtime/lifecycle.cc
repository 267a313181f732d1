#include "node/runtime/lifecycle.h"

#include <signal.h>

#include <algorithm>
#include <charconv>

namespace constellation::runtime {
namespace {

constexpr int64_t kDayMs = 24LL * 3600 * 1000;
constexpr int64_t kHourMs = 3600LL * 1000;

struct SignalEntry {
  int sig;
  const char* name;
};
constexpr SignalEntry kSignals[] = {
    {SIGHUP, "SIGHUP"},       {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"},   {SIGILL, "SIGILL"},
    {SIGTRAP, "SIGTRAP"},     {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},     {SIGFPE, "SIGFPE"},
    {SIGKILL, "SIGKILL"},     {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"},   {SIGUSR2, "SIGUSR2"},
    {SIGPIPE, "SIGPIPE"},     {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},   {SIGCHLD, "SIGCHLD"},
    {SIGCONT, "SIGCONT"},     {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"},   {SIGTTIN, "SIGTTIN"},
    {SIGTTOU, "SIGTTOU"},     {SIGURG, "SIGURG"},   {SIGXCPU, "SIGXCPU"},   {SIGXFSZ, "SIGXFSZ"},
    {SIGVTALRM, "SIGVTALRM"}, {SIGPROF, "SIGPROF"}, {SIGWINCH, "SIGWINCH"}, {SIGIO, "SIGIO"},
    {SIGPWR, "SIGPWR"},       {SIGSYS, "SIGSYS"},
};

bool ParseInt(std::string_view s, int64_t* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

Result<RestartPolicy> ParseRestartPolicy(std::string_view text) {
  if (text == "never") return RestartPolicy::kNever;
  if (text == "on-failure") return RestartPolicy::kOnFailure;
  if (text == "always") return RestartPolicy::kAlways;
  return Status::InvalidArgument("restart must be never, on-failure or always, not '" +
                                 std::string(text) + "'");
}

const char* RestartPolicyName(RestartPolicy policy) {
  switch (policy) {
    case RestartPolicy::kNever:
      return "never";
    case RestartPolicy::kOnFailure:
      return "on-failure";
    case RestartPolicy::kAlways:
      return "always";
  }
  return "never";
}

std::string SignalName(int sig) {
  for (const auto& e : kSignals) {
    if (e.sig == sig) return e.name;
  }
  return "SIG" + std::to_string(sig);
}

Result<int> ParseSignal(std::string_view text) {
  int64_t n;
  if (ParseInt(text, &n)) {
    if (n < 1 || n > 64) return Status::InvalidArgument("signal number must be 1..64");
    return static_cast<int>(n);
  }
  std::string name(text);
  std::transform(name.begin(), name.end(), name.begin(), ::toupper);
  if (name.rfind("SIG", 0) != 0) name = "SIG" + name;
  for (const auto& e : kSignals) {
    if (name == e.name) return e.sig;
  }
  return Status::InvalidArgument("unknown signal '" + std::string(text) + "'");
}

Status ValidateBackoff(const BackoffConfig& c) {
  if (c.initial_ms < 1 || c.initial_ms > c.max_ms || c.max_ms > kDayMs)
    return Status::InvalidArgument("back-off needs 1 <= initial_ms <= max_ms <= 24 h");
  if (c.reset_after_ms <= 0 || c.reset_after_ms > kDayMs)
    return Status::InvalidArgument("back-off reset_after_ms must be in (0, 24 h]");
  return Status::Ok();
}

Status ValidateLifecycleConfig(const LifecycleConfig& c) {
  if (c.stop_grace_ms < 0 || c.stop_grace_ms > kHourMs)
    return Status::InvalidArgument("stop grace period must be 0..1 h");
  return ValidateBackoff(c.backoff);
}

const char* DesiredName(Desired desired) {
  switch (desired) {
    case Desired::kNone:
      return "";
    case Desired::kRunning:
      return "running";
    case Desired::kStopped:
      return "stopped";
  }
  return "";
}

int64_t Backoff::Next() {
  int64_t d = next_ms_ == 0 ? config_.initial_ms : next_ms_;
  d = std::min(d, config_.max_ms);
  last_ms_ = d;
  next_ms_ = d >= config_.max_ms / 2 ? config_.max_ms : d * 2;
  return d;
}

std::string FormatAction(const Action& a) {
  auto quote = [](const std::string& v) {
    if (!v.empty() && v.find_first_of(" \t\"") == std::string::npos) return v;
    std::string q = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  };
  switch (a.kind) {
    case Action::Kind::kSpawn:
      return "spawn";
    case Action::Kind::kSignal:
      return "signal " + SignalName(a.sig);
    case Action::Kind::kKillAll:
      return "kill_all";
    case Action::Kind::kTimer:
      return "timer " + std::to_string(a.at_ms);
    case Action::Kind::kPublish: {
      std::string s = "publish " + a.event + " state=" + quote(a.state);
      for (const auto& [k, v] : a.detail) s += " " + k + "=" + quote(v);
      return s;
    }
  }
  return "?";
}

const char* PhaseName(Lifecycle::Phase phase) {
  switch (phase) {
    case Lifecycle::Phase::kCreated:
      return "created";
    case Lifecycle::Phase::kStarting:
      return "starting";
    case Lifecycle::Phase::kRunning:
      return "running";
    case Lifecycle::Phase::kStopping:
      return "stopping";
    case Lifecycle::Phase::kStopped:
      return "stopped";
    case Lifecycle::Phase::kExited:
      return "exited";
    case Lifecycle::Phase::kFailed:
      return "failed";
    case Lifecycle::Phase::kBackoff:
      return "backoff";
  }
  return "?";
}

Lifecycle::Lifecycle(LifecycleConfig config) : config_(config), backoff_(config.backoff) {}

bool Lifecycle::has_process() const {
  return phase_ == Phase::kStarting || phase_ == Phase::kRunning || phase_ == Phase::kStopping;
}

int64_t Lifecycle::running_since_ms() const {
  return (phase_ == Phase::kRunning || phase_ == Phase::kStopping) ? started_ms_ : 0;
}

void Lifecycle::SetState(Phase phase, std::string text) {
  phase_ = phase;
  state_ = std::move(text);
}

void Lifecycle::Publish(std::string event, std::vector<std::pair<std::string, std::string>> detail,
                        Actions* out) {
  Action a;
  a.kind = Action::Kind::kPublish;
  a.event = std::move(event);
  a.state = state_;
  a.detail = std::move(detail);
  out->push_back(std::move(a));
}

std::vector<Action> Lifecycle::Handle(int64_t now_ms, const Event& event) {
  now_ms_ = std::max(now_ms_, now_ms);
  Actions out;
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, ev::Start>) {
          OnStart(&out);
        } else if constexpr (std::is_same_v<T, ev::Stop>) {
          OnStop(&out);
        } else if constexpr (std::is_same_v<T, ev::Restart>) {
          if (phase_ == Phase::kRunning) {
            OnStop(&out, /*then_start=*/true);
          } else if (phase_ == Phase::kStarting) {
            desired_ = Desired::kRunning;
            stop_after_start_ = true;
            start_after_stop_ = true;
          } else if (phase_ == Phase::kStopping) {
            desired_ = Desired::kRunning;
            start_after_stop_ = true;
          } else {
            OnStart(&out);
          }
        } else if constexpr (std::is_same_v<T, ev::Kill>) {
          if ((phase_ == Phase::kRunning || phase_ == Phase::kStopping) && pid_ > 0) {
            out.push_back(Action::Signal(e.sig));
          }
        } else if constexpr (std::is_same_v<T, ev::SetPolicy>) {
          config_.policy = e.policy;
          if ((phase_ == Phase::kExited || phase_ == Phase::kFailed) && last_retryable_) {
            MaybeRestart(last_failed_, &out);
          } else if (phase_ == Phase::kBackoff && !ShouldRestart(last_failed_)) {
            phase_ = state_.rfind("exited ", 0) == 0 ? Phase::kExited : Phase::kFailed;
          }
        } else if constexpr (std::is_same_v<T, ev::Started>) {
          if (phase_ != Phase::kStarting) return;
          pid_ = e.pid;
          started_ms_ = now_ms_;
          SetState(Phase::kRunning, "running");
          Publish("instance_started", {{"pid", std::to_string(e.pid)}}, &out);
          if (stop_after_start_) {
            stop_after_start_ = false;
            OnStop(&out, start_after_stop_);
          }
        } else if constexpr (std::is_same_v<T, ev::StartFailed>) {
          OnStartFailed(e, &out);
        } else if constexpr (std::is_same_v<T, ev::Exited>) {
          OnExited(e, &out);
        } else if constexpr (std::is_same_v<T, ev::Tick>) {
          OnTick(&out);
        } else if constexpr (std::is_same_v<T, ev::Adopted>) {
          if (phase_ != Phase::kCreated) return;
          desired_ = e.desired;
          pid_ = e.pid;
          started_ms_ = e.started_ms;
          SetState(Phase::kRunning, "running");
          Publish("instance_adopted", {{"pid", std::to_string(e.pid)}}, &out);
          if (desired_ == Desired::kStopped) OnStop(&out);
        } else if constexpr (std::is_same_v<T, ev::Lost>) {
          if (phase_ != Phase::kCreated) return;
          desired_ = e.desired;
          if (desired_ == Desired::kStopped) {
            SetState(Phase::kStopped, "stopped");
            Publish("instance_stopped", {}, &out);
            return;
          }
          error_ = e.oom ? "oom" : "lost";
          exit_code_ = -1;
          SetState(Phase::kFailed, "failed " + error_);
          Publish("instance_failed", {{"reason", error_}}, &out);
          last_retryable_ = true;
          MaybeRestart(true, &out);
        } else if constexpr (std::is_same_v<T, ev::Restore>) {
          if (phase_ != Phase::kCreated) return;
          desired_ = e.desired;
          restarts_ = e.restarts;
          const std::string& s = e.state;
          int64_t code;
          if (s == "stopped") {
            SetState(Phase::kStopped, s);
          } else if (s.rfind("exited ", 0) == 0 && ParseInt(s.substr(7), &code)) {
            exit_code_ = static_cast<int>(code);
            SetState(Phase::kExited, s);
            last_failed_ = code != 0;
          } else if (s.rfind("failed ", 0) == 0 && s.size() > 7) {
            error_ = s.substr(7);
            SetState(Phase::kFailed, s);
            last_failed_ = true;
            last_retryable_ = error_.rfind("exec:", 0) != 0;
          } else {
            return;  // created, or a text this version does not know: start from scratch
          }
          if (last_retryable_) MaybeRestart(last_failed_, &out);
        }
      },
      event);
  int64_t deadline = NextDeadline();
  if (deadline != timer_at_ms_) {
    timer_at_ms_ = deadline;
    out.push_back(Action::Timer(deadline));
  }
  return out;
}

void Lifecycle::Spawn(Actions* out) {
  pid_ = 0;
  SetState(Phase::kStarting, "starting");
  Publish("instance_starting", {}, out);
  out->push_back(Action::Spawn());
}

void Lifecycle::OnStart(Actions* out) {
  desired_ = Desired::kRunning;
  switch (phase_) {
    case Phase::kCreated:
    case Phase::kStopped:
    case Phase::kExited:
    case Phase::kFailed:
    case Phase::kBackoff:  // a manual start does not wait out the back-off
      backoff_.Reset();
      Spawn(out);
      break;
    case Phase::kStarting:
      stop_after_start_ = false;
      break;
    case Phase::kRunning:
      break;
    case Phase::kStopping:
      start_after_stop_ = true;
      break;
  }
}

void Lifecycle::OnStop(Actions* out, bool then_start) {
  desired_ = then_start ? Desired::kRunning : Desired::kStopped;
  start_after_stop_ = then_start;
  switch (phase_) {
    case Phase::kStarting:
      stop_after_start_ = true;
      break;
    case Phase::kRunning:
      stop_deadline_ms_ = now_ms_ + config_.stop_grace_ms;
      kill_sent_ = false;
      SetState(Phase::kStopping, "stopping");
      Publish("instance_stopping", {{"signal", "SIGTERM"}}, out);
      out->push_back(Action::Signal(SIGTERM));
      if (config_.stop_grace_ms == 0) OnTick(out);
      break;
    case Phase::kBackoff:
      SetState(Phase::kStopped, "stopped");
      Publish("instance_stopped", {}, out);
      if (then_start) OnStart(out);
      break;
    default:
      if (then_start) OnStart(out);
      break;
  }
}

void Lifecycle::OnStartFailed(const ev::StartFailed& e, Actions* out) {
  if (phase_ != Phase::kStarting) return;
  pid_ = 0;
  stop_after_start_ = false;
  error_ = e.reason;
  exit_code_ = -1;
  last_retryable_ = e.retryable;
  SetState(Phase::kFailed, "failed " + e.reason);
  Publish("instance_failed", {{"reason", e.reason}}, out);
  if (start_after_stop_) {
    start_after_stop_ = false;
  }
  if (e.retryable) {
    MaybeRestart(true, out);
  } else {
    last_failed_ = true;
  }
}

void Lifecycle::OnExited(const ev::Exited& e, Actions* out) {
  if (!has_process()) return;
  bool was_stopping = phase_ == Phase::kStopping;
  std::vector<std::pair<std::string, std::string>> how;
  if (e.unknown) {
    how.push_back({"status", "unknown"});
  } else if (e.signal != 0) {
    how.push_back({"signal", SignalName(e.signal)});
  } else {
    how.push_back({"code", std::to_string(e.code)});
  }
  if (e.oom) how.push_back({"oom", "1"});
  pid_ = 0;
  stop_after_start_ = false;
  if (was_stopping) {
    exit_code_ = (e.unknown || e.signal != 0) ? -1 : e.code;
    SetState(Phase::kStopped, "stopped");
    Publish("instance_stopped", std::move(how), out);
    if (start_after_stop_) {
      start_after_stop_ = false;
      desired_ = Desired::kRunning;
      backoff_.Reset();
      Spawn(out);
    }
    return;
  }
  if (now_ms_ - started_ms_ >= config_.backoff.reset_after_ms) backoff_.Reset();
  last_retryable_ = true;
  bool failed = true;
  if (e.unknown) {
    exit_code_ = -1;
    error_ = "unknown";
  } else if (e.oom) {
    exit_code_ = -1;
    error_ = "oom";
  } else if (e.signal != 0) {
    exit_code_ = -1;
    error_ = "signal " + SignalName(e.signal);
  } else {
    exit_code_ = e.code;
    failed = e.code != 0;
    error_.clear();
  }
  if (failed && exit_code_ < 0) {
    SetState(Phase::kFailed, "failed " + error_);
    Publish("instance_failed", std::move(how), out);
  } else {
    SetState(Phase::kExited, "exited " + std::to_string(exit_code_));
    Publish("instance_exited", std::move(how), out);
  }
  if (start_after_stop_) {  // a restart verb raced with an exit of its own
    start_after_stop_ = false;
    backoff_.Reset();
    Spawn(out);
    return;
  }
  MaybeRestart(failed, out);
}

bool Lifecycle::ShouldRestart(bool failed) const {
  if (desired_ != Desired::kRunning) return false;
  switch (config_.policy) {
    case RestartPolicy::kNever:
      return false;
    case RestartPolicy::kOnFailure:
      return failed;
    case RestartPolicy::kAlways:
      return true;
  }
  return false;
}

void Lifecycle::MaybeRestart(bool failed, Actions* out) {
  last_failed_ = failed;
  if (!ShouldRestart(failed)) return;
  int64_t delay = backoff_.Next();
  restart_at_ms_ = now_ms_ + delay;
  phase_ = Phase::kBackoff;  // the state text stays the exit's
  Publish("instance_restarting", {{"in_ms", std::to_string(delay)}}, out);
}

void Lifecycle::OnTick(Actions* out) {
  switch (phase_) {
    case Phase::kStopping:
      if (!kill_sent_ && now_ms_ >= stop_deadline_ms_) {
        kill_sent_ = true;
        Publish("instance_stop_timeout", {{"signal", "SIGKILL"}}, out);
        out->push_back(Action::KillAll());
      }
      break;
    case Phase::kBackoff:
      if (now_ms_ >= restart_at_ms_) {
        ++restarts_;
        pid_ = 0;
        SetState(Phase::kStarting, "starting");
        Publish("instance_starting", {{"restarts", std::to_string(restarts_)}}, out);
        out->push_back(Action::Spawn());
      }
      break;
    case Phase::kRunning:
      if (backoff_.last_ms() != 0 && now_ms_ - started_ms_ >= config_.backoff.reset_after_ms)
        backoff_.Reset();
      break;
    default:
      break;
  }
}

int64_t Lifecycle::NextDeadline() const {
  switch (phase_) {
    case Phase::kStopping:
      return kill_sent_ ? 0 : stop_deadline_ms_;
    case Phase::kBackoff:
      return restart_at_ms_;
    case Phase::kRunning:
      return backoff_.last_ms() != 0 ? started_ms_ + config_.backoff.reset_after_ms : 0;
    default:
      return 0;
  }
}

}  // namespace constellation::runtime
