#include "fsd/errno.h"

#include <cerrno>

namespace constellation {

int ToErrno(const Status& status) {
  switch (status.code()) {
    case Code::kOk:
      return 0;
    case Code::kNotFound:
      return ENOENT;
    case Code::kAlreadyExists:
      return EEXIST;
    case Code::kInvalidArgument:
      return EINVAL;
    case Code::kPermissionDenied:
      return EACCES;
    case Code::kNotPermitted:
      return EPERM;
    case Code::kBusy:
      return EBUSY;
    case Code::kUnavailable:
      return EAGAIN;
    case Code::kTimedOut:
      return ETIMEDOUT;
    case Code::kIoError:
      return EIO;
    case Code::kNoSpace:
      return ENOSPC;
    case Code::kCorruption:
      return EIO;
    case Code::kNotSupported:
      return ENOTSUP;
    case Code::kNotEmpty:
      return ENOTEMPTY;
    case Code::kNotDirectory:
      return ENOTDIR;
    case Code::kIsDirectory:
      return EISDIR;
    case Code::kOutOfRange:
      return ERANGE;
    case Code::kTooLarge:
      return EFBIG;
    case Code::kNameTooLong:
      return ENAMETOOLONG;
    case Code::kInterrupted:
      return EINTR;
    case Code::kInternal:
      return EIO;
    case Code::kNoData:
      return ENODATA;
    case Code::kTooManyLinks:
      return EMLINK;
    case Code::kLoop:
      return ELOOP;
  }
  return EIO;
}

}  // namespace constellation
