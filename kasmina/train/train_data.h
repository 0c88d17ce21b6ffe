// What the trainer draws its batches from, behind one interface so Trainer::step has one path:
// feature vectors with a class each (Fashion-MNIST, teacher, .npy; train/data.h) or the bytes of
// a text (the transformer host; train/text_data.h). Batches are pure functions of (seed, step,
// rank): resuming needs no data state. A batch stays valid until the next call.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kasmina/io/config.h"
#include "kasmina/model/model.h"
#include "kasmina/train/data.h"
#include "kasmina/train/text_data.h"

namespace esper::kasmina {

class TrainData {
public:
    virtual ~TrainData() = default;
    virtual const std::string& description() const = 0;
    // What the model reads: input features per sample (0 for text) and output classes.
    virtual int64_t in_features() const = 0;
    virtual int64_t classes() const = 0;
    virtual int64_t steps_per_epoch() const = 0;
    // The training batch of optimizer step `step` (0-based) on this rank.
    virtual Batch train_batch(int64_t step) = 0;
    // The evaluation set: samples (feature rows, or fixed validation windows) and rows each.
    virtual int64_t eval_samples() const = 0;
    virtual int64_t rows_per_sample() const { return 1; }
    // Evaluation samples [first, first + count).
    virtual Batch eval_batch(int64_t first, int64_t count) = 0;
    // Text: losses are nats per byte, so evaluation also reports bits per byte and perplexity.
    virtual bool bytes() const { return false; }
};

// Feature vectors: the Sampler's epoch permutation and this rank's shard (data.h).
class FeatureData final : public TrainData {
public:
    FeatureData(DataSplits splits, int64_t batch_size, uint64_t seed, int rank, int world);
    const std::string& description() const override { return splits_.description; }
    int64_t in_features() const override { return splits_.train.features; }
    int64_t classes() const override;
    int64_t steps_per_epoch() const override { return sampler_.batches_per_epoch(); }
    Batch train_batch(int64_t step) override;
    int64_t eval_samples() const override { return splits_.test.n; }
    Batch eval_batch(int64_t first, int64_t count) override;
    const DataSplits& splits() const { return splits_; }

private:
    DataSplits splits_;
    int64_t batch_size_;
    Sampler sampler_;
    AlignedVector<float> x_;
    std::vector<int32_t> y_;
    std::vector<int64_t> idx_;
};

// Bytes of text: `batch_size` windows of `context` + 1 bytes per step (text_data.h).
class TextData final : public TrainData {
public:
    TextData(TextCorpus corpus, int64_t batch_size, int64_t context, int64_t eval_windows,
             uint64_t seed, int rank);
    const std::string& description() const override { return corpus_.description; }
    int64_t in_features() const override { return 0; }
    int64_t classes() const override { return 256; }
    int64_t steps_per_epoch() const override { return steps_per_epoch_; }
    Batch train_batch(int64_t step) override;
    int64_t eval_samples() const override { return eval_windows_; }
    int64_t rows_per_sample() const override { return context_; }
    Batch eval_batch(int64_t first, int64_t count) override;
    bool bytes() const override { return true; }

private:
    TextCorpus corpus_;
    int64_t batch_size_, context_, eval_windows_, steps_per_epoch_;
    uint64_t seed_;
    int rank_;
    std::vector<int32_t> tokens_, targets_;
};

// The configured data (config.data), this rank's view of it. Throws esper::Error naming the
// file and the fix when it cannot be read.
std::unique_ptr<TrainData> load_train_data(const Config& config, int rank, int world);

}  // namespace esper::kasmina
