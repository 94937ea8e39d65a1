// A minimal parallel-for: spreads `count` work items over the machine's cores with an atomic counter
// (items are taken in ascending order, so give the heaviest ones low indices), on helper threads
// started once and kept (a concurrent second caller starts threads of its own instead).
// Thread safety: callable from any thread; `fn` runs concurrently on several threads and must only
// write disjoint data.
#pragma once
#include <functional>

namespace setokim {

// Number of worker threads ParallelFor uses: the CPUs this process may run on (its affinity mask,
// read once), at least 1.
int WorkerCount();

// Runs fn(i) for i in [0, count), on up to WorkerCount() threads (the caller's thread included);
// with parallel = false (small problems, where waking a helper costs more than it saves) it runs
// inline. An exception thrown by fn is rethrown on the caller's thread after all threads joined.
void ParallelFor(int count, const std::function<void(int)>& fn, bool parallel = true);

}  // namespace setokim
