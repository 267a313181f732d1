// The process-wide budgets of the descriptors the runtime keeps open for rewrites (cgroup limit
// files, instance spec files), for tests that use them up to reach the paths without a kept
// descriptor. Thread-safe (FdBudget).
#ifndef CONSTELLATION_NODE_RUNTIME_KEPT_FDS_INTERNAL_H_
#define CONSTELLATION_NODE_RUNTIME_KEPT_FDS_INTERNAL_H_

#include "node/base/fd.h"

namespace constellation::runtime {

FdBudget& KeptLimitFds();  // cgroup.cc
FdBudget& KeptSpecFds();   // runtime.cc

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_KEPT_FDS_INTERNAL_H_
