// Minimal host tensors: a 64-byte aligned float buffer with a shape. Values, not resources:
// copying a Tensor copies its data (snapshots and checkpoints rely on that). Row-major.
// Hot paths take raw pointers/spans from data(); nothing here allocates after construction.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <vector>

namespace esper::kasmina {

// std::allocator replacement that aligns to 64 bytes (cache line / AVX-512 loads).
template <typename T>
struct AlignedAllocator {
    using value_type = T;
    static constexpr std::align_val_t kAlign{64};
    AlignedAllocator() = default;
    template <typename U>
    AlignedAllocator(const AlignedAllocator<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
    void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
    template <typename U>
    bool operator==(const AlignedAllocator<U>&) const {
        return true;
    }
};

template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

class Tensor {
public:
    Tensor() = default;
    explicit Tensor(std::vector<int64_t> shape, float fill = 0.0f);

    const std::vector<int64_t>& shape() const { return shape_; }
    int64_t dim(size_t i) const { return shape_.at(i); }
    int64_t numel() const { return static_cast<int64_t>(data_.size()); }
    float* data() { return data_.data(); }
    const float* data() const { return data_.data(); }
    std::span<float> span() { return {data_.data(), data_.size()}; }
    std::span<const float> span() const { return {data_.data(), data_.size()}; }
    float& operator[](int64_t i) { return data_[static_cast<size_t>(i)]; }
    float operator[](int64_t i) const { return data_[static_cast<size_t>(i)]; }
    void fill(float v);
    // Changes the shape; keeps (and zero-extends) the data. Allocates only when growing.
    void resize(std::vector<int64_t> shape);
    std::string shape_string() const;
    bool operator==(const Tensor& o) const { return shape_ == o.shape_ && data_ == o.data_; }

private:
    std::vector<int64_t> shape_;
    AlignedVector<float> data_;
};

int64_t shape_numel(const std::vector<int64_t>& shape);

// ---- deterministic RNG ----
// xoshiro256** seeded through splitmix64. Portable (no std distributions), so the same seed
// gives the same numbers everywhere; the state is four words, saved in checkpoints.
class Rng {
public:
    explicit Rng(uint64_t seed = 0) { reseed(seed); }
    void reseed(uint64_t seed);
    uint64_t next_u64();
    // Uniform in [0, 1) with 24 random bits (exactly representable as float).
    float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }
    float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
    double uniform_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
    float normal();  // standard normal (Box-Muller, no cached second value)
    // Uniform integer in [0, n), n > 0 (Lemire's multiply-shift, tiny bias acceptable here).
    uint64_t below(uint64_t n);
    std::array<uint64_t, 4> state() const { return s_; }
    void set_state(const std::array<uint64_t, 4>& s) { s_ = s; }

private:
    std::array<uint64_t, 4> s_{};
};

// Mixes two words into a seed for a derived stream (e.g. (run seed, epoch) → shuffle seed).
uint64_t mix_seed(uint64_t a, uint64_t b);

}  // namespace esper::kasmina
