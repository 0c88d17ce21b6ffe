// Data sharding for data-parallel ranks: one permutation of the dataset per epoch, the same on
// every rank (deterministic from seed and epoch, independent of the standard library), dealt
// round-robin: rank r takes perm[r], perm[r + W], perm[r + 2W], ... So the k-th local batch of
// every rank together is exactly the k-th global batch a single rank would draw (batch B = W *
// local batch), which keeps a W-rank run comparable to a 1-rank run. The n % W tail is dropped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace esper::kasmina {

// A permutation of [0, n) drawn from (seed, epoch).
std::vector<std::uint32_t> epoch_permutation(std::size_t n, std::uint64_t seed,
                                             std::uint64_t epoch);

// Samples per rank per epoch: n / world (the tail of n % world samples is dropped).
std::size_t shard_size(std::size_t n, int world);

// The samples rank `rank` of `world` visits in `epoch`, in order.
std::vector<std::uint32_t> shard_indices(std::size_t n, std::uint64_t seed, std::uint64_t epoch,
                                         int rank, int world);

}  // namespace esper::kasmina
