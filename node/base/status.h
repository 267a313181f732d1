// Status and Result<T>: how every module reports failure (no exceptions across modules).
//
// A Status is a code plus a human-readable message. The FUSE front turns the code into an errno in
// exactly one place (fsd/errno.cc); the message is what the user reads in an object's `error` file.
// Thread-safety: values; safe to copy between threads.
#ifndef CONSTELLATION_NODE_BASE_STATUS_H_
#define CONSTELLATION_NODE_BASE_STATUS_H_

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace constellation {

enum class Code : int {
  kOk = 0,
  kNotFound,          // ENOENT
  kAlreadyExists,     // EEXIST
  kInvalidArgument,   // EINVAL
  kPermissionDenied,  // EACCES
  kNotPermitted,      // EPERM
  kBusy,              // EBUSY
  kUnavailable,       // EAGAIN: retry later (no leader, no quorum, queue full)
  kTimedOut,          // ETIMEDOUT
  kIoError,           // EIO
  kNoSpace,           // ENOSPC
  kCorruption,        // EIO, and counted
  kNotSupported,      // ENOTSUP
  kNotEmpty,          // ENOTEMPTY
  kNotDirectory,      // ENOTDIR
  kIsDirectory,       // EISDIR
  kOutOfRange,        // ERANGE
  kTooLarge,          // EFBIG / E2BIG
  kNameTooLong,       // ENAMETOOLONG
  kInterrupted,       // EINTR
  kInternal,          // EIO
  kNoData,            // ENODATA (no such xattr)
  kTooManyLinks,      // EMLINK
  kLoop,              // ELOOP, and EINVAL for a directory moved into itself
};

const char* CodeName(Code code);
// The inverse of CodeName; kInternal for an unknown name.
Code CodeFromName(std::string_view name);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {Code::kAlreadyExists, std::move(m)}; }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status PermissionDenied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
  static Status NotPermitted(std::string m) { return {Code::kNotPermitted, std::move(m)}; }
  static Status Busy(std::string m) { return {Code::kBusy, std::move(m)}; }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status TimedOut(std::string m) { return {Code::kTimedOut, std::move(m)}; }
  static Status IoError(std::string m) { return {Code::kIoError, std::move(m)}; }
  static Status NoSpace(std::string m) { return {Code::kNoSpace, std::move(m)}; }
  static Status Corruption(std::string m) { return {Code::kCorruption, std::move(m)}; }
  static Status NotSupported(std::string m) { return {Code::kNotSupported, std::move(m)}; }
  static Status NotEmpty(std::string m) { return {Code::kNotEmpty, std::move(m)}; }
  static Status OutOfRange(std::string m) { return {Code::kOutOfRange, std::move(m)}; }
  static Status TooLarge(std::string m) { return {Code::kTooLarge, std::move(m)}; }
  static Status Interrupted(std::string m) { return {Code::kInterrupted, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
  // From an errno value, for system calls; `what` says what was attempted.
  static Status FromErrno(int err, const std::string& what);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: ram_mb must be an integer" (or "OK").
  std::string ToString() const;

  bool operator==(const Status& other) const = default;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "Result built from an OK status has no value");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace constellation

// Returns early from the enclosing function when `expr` (a Status) is not OK.
#define CN_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    ::constellation::Status _cn_status = (expr); \
    if (!_cn_status.ok()) return _cn_status;     \
  } while (0)

#define CN_CONCAT_INNER(a, b) a##b
#define CN_CONCAT(a, b) CN_CONCAT_INNER(a, b)
// `CN_ASSIGN_OR_RETURN(auto x, F())`: x = F().value(), or return its Status.
#define CN_ASSIGN_OR_RETURN(lhs, expr)                                                          \
  auto CN_CONCAT(_cn_result_, __LINE__) = (expr);                                               \
  if (!CN_CONCAT(_cn_result_, __LINE__).ok()) return CN_CONCAT(_cn_result_, __LINE__).status(); \
  lhs = std::move(CN_CONCAT(_cn_result_, __LINE__)).value()

#endif  // CONSTELLATION_NODE_BASE_STATUS_H_
