// Sharding (see sharding.h). The generator is splitmix64 with unbiased bounded draws (rejection
// on the top of the range), so the permutation is identical across compilers and platforms;
// std::uniform_int_distribution would not be.
#include "kasmina/dist/sharding.h"

#include <limits>
#include <numeric>
#include <utility>

#include "core/check.h"

namespace esper::kasmina {

namespace {

struct SplitMix64 {
    std::uint64_t state;
    std::uint64_t next() {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, bound), bound > 0.
    std::uint64_t below(std::uint64_t bound) {
        const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() -
                                    std::numeric_limits<std::uint64_t>::max() % bound;
        std::uint64_t x;
        do {
            x = next();
        } while (x >= limit);
        return x % bound;
    }
};

}  // namespace

std::vector<std::uint32_t> epoch_permutation(std::size_t n, std::uint64_t seed,
                                             std::uint64_t epoch) {
    ESPER_REQUIRE(n <= std::numeric_limits<std::uint32_t>::max(), "n=", n);
    std::vector<std::uint32_t> perm(n);
    std::iota(perm.begin(), perm.end(), 0u);
    SplitMix64 mix{seed};
    SplitMix64 rng{mix.next() ^ (epoch * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull)};
    for (std::size_t i = n; i > 1; --i) {
        std::swap(perm[i - 1], perm[rng.below(i)]);
    }
    return perm;
}

std::size_t shard_size(std::size_t n, int world) {
    ESPER_REQUIRE(world >= 1, "world=", world);
    return n / static_cast<std::size_t>(world);
}

std::vector<std::uint32_t> shard_indices(std::size_t n, std::uint64_t seed, std::uint64_t epoch,
                                         int rank, int world) {
    ESPER_REQUIRE(world >= 1 && rank >= 0 && rank < world, "rank=", rank, " world=", world);
    const auto perm = epoch_permutation(n, seed, epoch);
    const std::size_t count = shard_size(n, world);
    std::vector<std::uint32_t> out(count);
    for (std::size_t k = 0; k < count; ++k) {
        out[k] = perm[static_cast<std::size_t>(rank) + k * static_cast<std::size_t>(world)];
    }
    return out;
}

}  // namespace esper::kasmina
