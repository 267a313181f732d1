#include "node/state/records.h"

#include <charconv>

#include "node/base/coding.h"

namespace constellation {
namespace {

// Instance records: version 2 added `network` and `pids_max` (version 1 records read with their
// defaults). Node records are still version 1.
constexpr uint16_t kRecordVersion = 1;
constexpr uint16_t kInstanceRecordVersion = 2;

bool IsNameChar(char c, bool first) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  return !first && (c == '_' || c == '.' || c == '-');
}

std::string Quote(std::string_view v) {
  constexpr size_t kShown = 40;
  std::string out = "\"";
  for (char c : v.substr(0, kShown)) {
    if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += '?';
    } else {
      out += c;
    }
  }
  if (v.size() > kShown) out += "...";
  return out + "\"";
}

Status ParseInt(std::string_view field, std::string_view value, int64_t lo, int64_t hi,
                std::string_view expected, int64_t* out) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    return Status::InvalidArgument(std::string(field) + ": " + Quote(value) +
                                   " is not an integer (expected " + std::string(expected) + ")");
  }
  if (v < lo || v > hi) {
    return Status::InvalidArgument(std::string(field) + ": " + std::to_string(v) +
                                   " is out of range (expected " + std::string(expected) + ")");
  }
  *out = v;
  return Status::Ok();
}

Status CheckText(std::string_view field, std::string_view value, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return Status::InvalidArgument(std::string(field) + ": longer than " +
                                   std::to_string(max_bytes) + " bytes");
  }
  for (char c : value) {
    if (c == '\0') return Status::InvalidArgument(std::string(field) + ": contains a NUL byte");
  }
  return Status::Ok();
}

bool IsEnvKey(std::string_view k) {
  if (k.empty() || k.size() > 255) return false;
  for (size_t i = 0; i < k.size(); ++i) {
    char c = k[i];
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

Status ParseEnv(std::string_view value, std::vector<std::string>* out) {
  CN_RETURN_IF_ERROR(CheckText("env", value, kMaxEnvVars * kMaxEnvLineBytes));
  std::vector<std::string> lines = SplitLines(value);
  if (lines.size() > kMaxEnvVars) {
    return Status::InvalidArgument("env: more than " + std::to_string(kMaxEnvVars) + " variables");
  }
  for (const std::string& line : lines) {
    size_t eq = line.find('=');
    if (eq == std::string::npos || !IsEnvKey(std::string_view(line).substr(0, eq))) {
      return Status::InvalidArgument("env: " + Quote(line) +
                                     " is not KEY=VALUE with KEY like [A-Za-z_][A-Za-z0-9_]*");
    }
    if (line.size() > kMaxEnvLineBytes) {
      return Status::InvalidArgument("env: a line is longer than " +
                                     std::to_string(kMaxEnvLineBytes) + " bytes");
    }
  }
  *out = std::move(lines);
  return Status::Ok();
}

Status ParsePlacement(std::string_view value, std::vector<std::string>* out) {
  CN_RETURN_IF_ERROR(CheckText("placement", value, 64 * 1024));
  std::vector<std::string> lines = SplitLines(value);
  if (lines.size() > kMaxListLines) {
    return Status::InvalidArgument("placement: more than " + std::to_string(kMaxListLines) +
                                   " lines");
  }
  for (const std::string& line : lines) {
    size_t eq = line.find('=');
    std::string key = line.substr(0, eq);
    std::string rest = eq == std::string::npos ? "" : line.substr(eq + 1);
    if (key == "strategy") {
      if (rest != "spread" && rest != "binpack" && rest != "random") {
        return Status::InvalidArgument(
            "placement: strategy must be spread, binpack or random, not " + Quote(rest));
      }
    } else if (key == "constraint" || key == "affinity" || key == "anti_affinity") {
      size_t eq2 = rest.find('=');
      if (eq2 == std::string::npos || eq2 == 0) {
        return Status::InvalidArgument("placement: " + key + " must be " + key +
                                       "=KEY=VALUE, not " + Quote(line));
      }
    } else {
      return Status::InvalidArgument(
          "placement: " + Quote(line) +
          " is not one of strategy=..., constraint=k=v, affinity=k=v, anti_affinity=k=v");
    }
  }
  *out = std::move(lines);
  return Status::Ok();
}

Status ParseSecrets(std::string_view value, std::vector<std::string>* out) {
  CN_RETURN_IF_ERROR(CheckText("secrets", value, 64 * 1024));
  std::vector<std::string> lines = SplitLines(value);
  if (lines.size() > kMaxListLines) {
    return Status::InvalidArgument("secrets: more than " + std::to_string(kMaxListLines) +
                                   " names");
  }
  for (const std::string& line : lines) CN_RETURN_IF_ERROR(ValidateName(line, "secrets: name"));
  *out = std::move(lines);
  return Status::Ok();
}

std::string JoinLines(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

bool IsMultiLine(std::string_view field) {
  return field == "env" || field == "placement" || field == "secrets";
}

void PutList(Writer* w, const std::vector<std::string>& v) {
  w->Varint(v.size());
  for (const std::string& s : v) w->Bytes(s);
}

bool GetList(Reader* r, std::vector<std::string>* v) {
  uint64_t n = 0;
  if (!r->Varint(&n) || n > kMaxEnvVars) return false;
  v->resize(n);
  for (std::string& s : *v) {
    if (!r->Bytes(&s, kMaxEnvLineBytes)) return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> SplitLines(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) out.emplace_back(line);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

Status ValidateName(std::string_view name, std::string_view what) {
  bool ok = !name.empty() && name.size() <= kMaxNameBytes;
  for (size_t i = 0; ok && i < name.size(); ++i) ok = IsNameChar(name[i], i == 0);
  if (!ok) {
    return Status::InvalidArgument(std::string(what) + " " + Quote(name) +
                                   " must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}");
  }
  return Status::Ok();
}

const std::vector<std::string>& InstanceConfigFields() {
  static const std::vector<std::string> kFields = {
      "cmd",     "env",     "cpu_percent", "ram_mb",    "disk_mb",   "pids_max",
      "network", "restart", "node",        "placement", "namespace", "secrets"};
  return kFields;
}

bool IsInstanceConfigField(std::string_view field) {
  for (const std::string& f : InstanceConfigFields()) {
    if (f == field) return true;
  }
  return false;
}

Status SetInstanceField(InstanceRecord* r, std::string_view field, std::string_view value) {
  if (field == "cmd") {
    CN_RETURN_IF_ERROR(CheckText("cmd", value, kMaxCmdBytes));
    if (value.find('\n') != std::string_view::npos) {
      return Status::InvalidArgument("cmd: must be one line");
    }
    r->cmd = std::string(value);
  } else if (field == "env") {
    return ParseEnv(value, &r->env);
  } else if (field == "cpu_percent") {
    return ParseInt(field, value, 0, kMaxCpuPercent, "0..100000; 100 = one core, 0 = unlimited",
                    &r->cpu_percent);
  } else if (field == "ram_mb") {
    int64_t v = 0;
    CN_RETURN_IF_ERROR(ParseInt(field, value, 0, kMaxRamMb, "0 or 4..4194304 MiB", &v));
    if (v != 0 && v < kMinRamMb) {
      return Status::InvalidArgument("ram_mb: " + std::to_string(v) +
                                     " is out of range (expected 0 or 4..4194304 MiB)");
    }
    r->ram_mb = v;
  } else if (field == "disk_mb") {
    return ParseInt(field, value, 0, kMaxDiskMb, "0..16777216 MiB; 0 = no quota", &r->disk_mb);
  } else if (field == "pids_max") {
    return ParseInt(field, value, 0, kMaxPidsMax, "0..4194304; 0 = the node's default",
                    &r->pids_max);
  } else if (field == "network") {
    if (value != "host" && value != "isolated") {
      return Status::InvalidArgument("network: " + Quote(value) + " is not one of host, isolated");
    }
    r->network = std::string(value);
  } else if (field == "restart") {
    if (value != "never" && value != "on-failure" && value != "always") {
      return Status::InvalidArgument("restart: " + Quote(value) +
                                     " is not one of never, on-failure, always");
    }
    r->restart = std::string(value);
  } else if (field == "node") {
    // An instance without a node would be every node's in a cluster (InstanceAgent::Ours keeps
    // that reading only for records made before instances were placed).
    if (value.empty()) {
      return Status::InvalidArgument("node: empty; name the node to run it on (see nodes/)");
    }
    CN_RETURN_IF_ERROR(ValidateName(value, "node: name"));
    r->node = std::string(value);
  } else if (field == "placement") {
    return ParsePlacement(value, &r->placement);
  } else if (field == "namespace") {
    CN_RETURN_IF_ERROR(ValidateName(value, "namespace: name"));
    r->ns = std::string(value);
  } else if (field == "secrets") {
    return ParseSecrets(value, &r->secrets);
  } else {
    return Status::InvalidArgument(std::string(field) + ": not a configuration field");
  }
  return Status::Ok();
}

std::string GetInstanceField(const InstanceRecord& r, std::string_view field) {
  auto line = [](const std::string& s) { return s.empty() ? s : s + "\n"; };
  if (field == "cmd") return line(r.cmd);
  if (field == "env") return JoinLines(r.env);
  if (field == "cpu_percent") return std::to_string(r.cpu_percent) + "\n";
  if (field == "ram_mb") return std::to_string(r.ram_mb) + "\n";
  if (field == "disk_mb") return std::to_string(r.disk_mb) + "\n";
  if (field == "pids_max") return std::to_string(r.pids_max) + "\n";
  if (field == "network") return r.network + "\n";
  if (field == "restart") return r.restart + "\n";
  if (field == "node") return line(r.node);
  if (field == "placement") return JoinLines(r.placement);
  if (field == "namespace") return r.ns + "\n";
  if (field == "secrets") return JoinLines(r.secrets);
  return "";
}

Status ApplyInstanceSpec(InstanceRecord* record, std::string_view spec) {
  if (spec.size() > 256 * 1024) return Status::InvalidArgument("spec: too large");
  InstanceRecord next = *record;
  // Multi-line fields accumulate every line given for them, then replace the old value once.
  std::vector<std::pair<std::string, std::string>> multi;
  for (const std::string& line : SplitLines(spec)) {
    size_t eq = line.find('=');
    if (eq == std::string::npos) {
      return Status::InvalidArgument("spec: " + Quote(line) + " is not key=value");
    }
    std::string key = line.substr(0, eq);
    std::string value = line.substr(eq + 1);
    if (key == "desired") continue;  // shown by reads for completeness; set through ctl
    if (key == "node" && value == next.node) continue;  // a spec read back (even an old, empty one)
    if (!IsInstanceConfigField(key)) {
      return Status::InvalidArgument("spec: unknown key " + Quote(key) +
                                     " (keys: cmd env cpu_percent ram_mb disk_mb pids_max network "
                                     "restart node placement namespace secrets)");
    }
    if (IsMultiLine(key)) {
      auto it = multi.begin();
      while (it != multi.end() && it->first != key) ++it;
      if (it == multi.end()) {
        multi.emplace_back(key, value + "\n");
      } else {
        it->second += value + "\n";
      }
    } else {
      Status s = SetInstanceField(&next, key, value);
      if (!s.ok()) return Status(s.code(), "spec: " + s.message());
    }
  }
  for (const auto& [key, value] : multi) {
    Status s = SetInstanceField(&next, key, value);
    if (!s.ok()) return Status(s.code(), "spec: " + s.message());
  }
  *record = std::move(next);
  return Status::Ok();
}

std::string FormatInstanceSpec(const InstanceRecord& r) {
  std::string out;
  for (const std::string& field : InstanceConfigFields()) {
    if (IsMultiLine(field)) {
      for (const std::string& l : SplitLines(GetInstanceField(r, field))) {
        out += field + "=" + l + "\n";
      }
    } else {
      std::string v = GetInstanceField(r, field);
      if (!v.empty() && v.back() == '\n') v.pop_back();
      out += field + "=" + v + "\n";
    }
  }
  out += "desired=" + r.desired + "\n";
  return out;
}

Status ParseLabels(std::string_view value, std::vector<std::string>* labels) {
  CN_RETURN_IF_ERROR(CheckText("labels", value, 64 * 1024));
  std::vector<std::string> lines = SplitLines(value);
  if (lines.size() > kMaxListLines) {
    return Status::InvalidArgument("labels: more than " + std::to_string(kMaxListLines) +
                                   " labels");
  }
  for (const std::string& line : lines) {
    size_t eq = line.find('=');
    bool ok = eq != std::string::npos && eq > 0 && eq <= 63 &&
              line.size() - eq - 1 <= kMaxLabelValueBytes;
    for (size_t i = 0; ok && i < eq; ++i) {
      char c = line[i];
      ok = IsNameChar(c, false) || c == '/';
    }
    if (!ok) {
      return Status::InvalidArgument("labels: " + Quote(line) +
                                     " is not key=value (key [A-Za-z0-9_./-]{1,63}, value up to "
                                     "253 bytes)");
    }
  }
  *labels = std::move(lines);
  return Status::Ok();
}

std::string EncodeInstance(const InstanceRecord& r) {
  Writer w;
  w.Fixed16(kInstanceRecordVersion);
  w.Bytes(r.name);
  w.Fixed32(r.uid);
  w.Fixed32(r.gid);
  w.Fixed64(static_cast<uint64_t>(r.created_ms));
  w.Bytes(r.cmd);
  PutList(&w, r.env);
  w.Fixed64(static_cast<uint64_t>(r.cpu_percent));
  w.Fixed64(static_cast<uint64_t>(r.ram_mb));
  w.Fixed64(static_cast<uint64_t>(r.disk_mb));
  w.Bytes(r.restart);
  w.Bytes(r.node);
  PutList(&w, r.placement);
  w.Bytes(r.ns);
  PutList(&w, r.secrets);
  w.Bytes(r.desired);
  w.Bytes(r.state);
  w.Bytes(r.network);
  w.Fixed64(static_cast<uint64_t>(r.pids_max));
  return w.Take();
}

Result<InstanceRecord> DecodeInstance(std::string_view data) {
  Reader rd(data);
  InstanceRecord r;
  uint16_t version = 0;
  uint64_t created = 0, cpu = 0, ram = 0, disk = 0, pids = 0;
  constexpr size_t kMax = 64 * 1024;
  bool ok = rd.Fixed16(&version) && (version == 1 || version == kInstanceRecordVersion) &&
            rd.Bytes(&r.name, kMax) && rd.Fixed32(&r.uid) && rd.Fixed32(&r.gid) &&
            rd.Fixed64(&created) && rd.Bytes(&r.cmd, kMax) && GetList(&rd, &r.env) &&
            rd.Fixed64(&cpu) && rd.Fixed64(&ram) && rd.Fixed64(&disk) &&
            rd.Bytes(&r.restart, kMax) && rd.Bytes(&r.node, kMax) && GetList(&rd, &r.placement) &&
            rd.Bytes(&r.ns, kMax) && GetList(&rd, &r.secrets) && rd.Bytes(&r.desired, kMax) &&
            rd.Bytes(&r.state, kMax);
  if (ok && version >= 2) {
    ok = rd.Bytes(&r.network, kMax) && rd.Fixed64(&pids) &&
         (r.network == "host" || r.network == "isolated") &&
         pids <= static_cast<uint64_t>(kMaxPidsMax);
  }
  ok = ok && rd.done();
  if (!ok) return Status::Corruption("instance record: malformed");
  r.pids_max = static_cast<int64_t>(pids);
  r.created_ms = static_cast<int64_t>(created);
  r.cpu_percent = static_cast<int64_t>(cpu);
  r.ram_mb = static_cast<int64_t>(ram);
  r.disk_mb = static_cast<int64_t>(disk);
  return r;
}

std::string EncodeNode(const NodeRecord& r) {
  Writer w;
  w.Fixed16(kRecordVersion);
  w.Bytes(r.name);
  w.Bytes(r.addr);
  w.Fixed64(static_cast<uint64_t>(r.cpu_cores));
  w.Fixed64(static_cast<uint64_t>(r.ram_mb));
  w.Bytes(r.version);
  PutList(&w, r.labels);
  return w.Take();
}

Result<NodeRecord> DecodeNode(std::string_view data) {
  Reader rd(data);
  NodeRecord r;
  uint16_t version = 0;
  uint64_t cpu = 0, ram = 0;
  constexpr size_t kMax = 64 * 1024;
  bool ok = rd.Fixed16(&version) && version == kRecordVersion && rd.Bytes(&r.name, kMax) &&
            rd.Bytes(&r.addr, kMax) && rd.Fixed64(&cpu) && rd.Fixed64(&ram) &&
            rd.Bytes(&r.version, kMax) && GetList(&rd, &r.labels) && rd.done();
  if (!ok) return Status::Corruption("node record: malformed");
  r.cpu_cores = static_cast<int64_t>(cpu);
  r.ram_mb = static_cast<int64_t>(ram);
  return r;
}

}  // namespace constellation
