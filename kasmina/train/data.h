// Training data: Fashion-MNIST (Debian's dataset-fashion-mnist IDX .gz files, read through zlib),
// the synthetic `teacher` classification task, and user .npy files (features float32 [N, F],
// labels int [N]). Every failure is an esper::Error naming the file and the fix.
// Batch order is a pure function of (seed, epoch, rank, world): resuming needs no RNG state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kasmina/io/config.h"
#include "kasmina/model/tensor.h"

namespace esper::kasmina {

// One split: features row-major [n, features], labels in [0, classes).
struct Dataset {
    int64_t n = 0;
    int64_t features = 0;
    int64_t classes = 0;
    AlignedVector<float> x;
    std::vector<int32_t> y;
};

struct DataSplits {
    Dataset train;
    Dataset test;
    std::string description;  // e.g. "fashion_mnist (60000 train, 10000 test)"
};

// Reads {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from `dir`; pixels scaled to [0, 1]
// and standardised with the dataset's mean/std.
DataSplits load_fashion_mnist(const std::string& dir);
// One IDX file (gzip or plain): images → [n, rows·cols] floats in [0, 1]; labels → ints.
Dataset read_idx_images(const std::string& path);
std::vector<int32_t> read_idx_labels(const std::string& path);

// Random teacher MLP (features → hidden → classes, tanh) labels Gaussian inputs; `noise` adds
// Gaussian noise to the teacher's logits. Deterministic in `seed`.
DataSplits make_teacher(const TeacherConfig& config, uint64_t seed);

// .npy: features must be 2-D float32/float64, labels 1-D integer; C order only.
Dataset load_npy(const std::string& features_path, const std::string& labels_path);

// Dispatches on config.dataset (fashion_mnist | teacher | npy).
DataSplits load_data(const DataConfig& config, uint64_t seed);

// Deterministic epoch order: a permutation of [0, n) from (seed, epoch), then this rank's shard
// (positions rank, rank + world, ...). Batches are consecutive runs of `batch_size` indices; the
// last partial batch of an epoch is dropped in training (drop_last) so every step has B rows.
class Sampler {
public:
    Sampler(int64_t n, int64_t batch_size, uint64_t seed, int rank = 0, int world = 1);
    int64_t batches_per_epoch() const { return batches_per_epoch_; }
    int64_t batch_size() const { return batch_size_; }
    // Indices of batch `b` of `epoch` (b < batches_per_epoch()).
    const std::vector<int64_t>& batch(int64_t epoch, int64_t b);

private:
    int64_t n_, batch_size_;
    uint64_t seed_;
    int rank_, world_;
    int64_t batches_per_epoch_ = 0;
    int64_t cached_epoch_ = -1;
    std::vector<int64_t> order_;  // this rank's shard of the epoch permutation
    std::vector<int64_t> batch_;
};

// Copies rows `idx` of `ds` into x [idx.size(), F] and y.
void gather_batch(const Dataset& ds, const std::vector<int64_t>& idx, float* x, int32_t* y);

}  // namespace esper::kasmina
