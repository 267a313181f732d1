#include "node/state/command.h"

#include "node/base/coding.h"

namespace constellation {

std::string EncodeCommand(const Command& c) {
  Writer w;
  w.Fixed16(kCommandVersion);
  w.Fixed16(static_cast<uint16_t>(c.type));
  w.Fixed64(static_cast<uint64_t>(c.time_ms));
  w.Fixed32(c.uid);
  w.Fixed32(c.gid);
  w.Fixed32(static_cast<uint32_t>(c.pid));
  w.Fixed64(c.request_id);
  for (const std::string* s : {&c.node, &c.op, &c.path, &c.object, &c.field, &c.value, &c.result}) {
    w.Bytes(*s);
  }
  return w.Take();
}

Result<Command> DecodeCommand(std::string_view data) {
  Reader r(data);
  uint16_t version = 0, type = 0;
  uint64_t time_ms = 0, request_id = 0;
  uint32_t pid = 0;
  Command c;
  if (!r.Fixed16(&version)) return Status::Corruption("command: truncated header");
  if (version == 0 || version > kCommandVersion) {
    return Status::NotSupported("command: version " + std::to_string(version) +
                                " is newer than this daemon understands");
  }
  if (!r.Fixed16(&type) || !r.Fixed64(&time_ms) || !r.Fixed32(&c.uid) || !r.Fixed32(&c.gid) ||
      !r.Fixed32(&pid) || !r.Fixed64(&request_id)) {
    return Status::Corruption("command: truncated header");
  }
  if (type == 0 || type > kMaxCommandType) {
    return Status::NotSupported("command: unknown type " + std::to_string(type));
  }
  c.type = static_cast<CommandType>(type);
  c.time_ms = static_cast<int64_t>(time_ms);
  c.pid = static_cast<int32_t>(pid);
  c.request_id = request_id;
  if (!r.Bytes(&c.node, kMaxCommandNameBytes) || !r.Bytes(&c.op, kMaxCommandNameBytes) ||
      !r.Bytes(&c.path, kMaxCommandNameBytes) || !r.Bytes(&c.object, kMaxCommandNameBytes) ||
      !r.Bytes(&c.field, kMaxCommandNameBytes) || !r.Bytes(&c.value, kMaxCommandValueBytes) ||
      !r.Bytes(&c.result, kMaxCommandNameBytes)) {
    return Status::Corruption("command: malformed or oversized field");
  }
  if (!r.done()) return Status::Corruption("command: trailing bytes");
  return c;
}

}  // namespace constellation
