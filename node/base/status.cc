#include "node/base/status.h"

#include <cerrno>
#include <cstring>

namespace constellation {

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "OK";
    case Code::kNotFound:
      return "NotFound";
    case Code::kAlreadyExists:
      return "AlreadyExists";
    case Code::kInvalidArgument:
      return "InvalidArgument";
    case Code::kPermissionDenied:
      return "PermissionDenied";
    case Code::kNotPermitted:
      return "NotPermitted";
    case Code::kBusy:
      return "Busy";
    case Code::kUnavailable:
      return "Unavailable";
    case Code::kTimedOut:
      return "TimedOut";
    case Code::kIoError:
      return "IoError";
    case Code::kNoSpace:
      return "NoSpace";
    case Code::kCorruption:
      return "Corruption";
    case Code::kNotSupported:
      return "NotSupported";
    case Code::kNotEmpty:
      return "NotEmpty";
    case Code::kNotDirectory:
      return "NotDirectory";
    case Code::kIsDirectory:
      return "IsDirectory";
    case Code::kOutOfRange:
      return "OutOfRange";
    case Code::kTooLarge:
      return "TooLarge";
    case Code::kNameTooLong:
      return "NameTooLong";
    case Code::kInterrupted:
      return "Interrupted";
    case Code::kInternal:
      return "Internal";
    case Code::kNoData:
      return "NoData";
    case Code::kTooManyLinks:
      return "TooManyLinks";
    case Code::kLoop:
      return "Loop";
  }
  return "Unknown";
}

Code CodeFromName(std::string_view name) {
  for (int c = 0; c <= static_cast<int>(Code::kLoop); ++c) {
    if (name == CodeName(static_cast<Code>(c))) return static_cast<Code>(c);
  }
  return Code::kInternal;
}

Status Status::FromErrno(int err, const std::string& what) {
  std::string m = what + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return NotFound(m);
    case EEXIST:
      return AlreadyExists(m);
    case EINVAL:
      return InvalidArgument(m);
    case EACCES:
      return PermissionDenied(m);
    case EPERM:
      return NotPermitted(m);
    case EBUSY:
      return Busy(m);
    case EAGAIN:
      return Unavailable(m);
    case ETIMEDOUT:
      return TimedOut(m);
    case ENOSPC:
    case EDQUOT:
      return NoSpace(m);
    case ENOTSUP:
      return NotSupported(m);
    case ENOTEMPTY:
      return NotEmpty(m);
    case ENOTDIR:
      return Status(Code::kNotDirectory, m);
    case EISDIR:
      return Status(Code::kIsDirectory, m);
    case ERANGE:
      return OutOfRange(m);
    case EFBIG:
    case E2BIG:
      return TooLarge(m);
    case ENAMETOOLONG:
      return Status(Code::kNameTooLong, m);
    case EINTR:
      return Interrupted(m);
    case ENODATA:
      return Status(Code::kNoData, m);
    case EMLINK:
      return Status(Code::kTooManyLinks, m);
    case ELOOP:
      return Status(Code::kLoop, m);
    default:
      return IoError(m);
  }
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(code_)) + ": " + message_;
}

}  // namespace constellation
