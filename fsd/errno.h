// The one place a Status becomes an errno (DESIGN.md §2.4).
// Thread-safety: pure functions.
#ifndef CONSTELLATION_FSD_ERRNO_H_
#define CONSTELLATION_FSD_ERRNO_H_

#include "node/base/status.h"

namespace constellation {

// 0 for OK.
int ToErrno(const Status& status);

}  // namespace constellation

#endif  // CONSTELLATION_FSD_ERRNO_H_
