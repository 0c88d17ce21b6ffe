// Feature and text data behind TrainData (see train_data.h).
#include "kasmina/train/train_data.h"

#include <algorithm>

#include "core/check.h"
#include "core/error.h"

namespace esper::kasmina {

FeatureData::FeatureData(DataSplits splits, int64_t batch_size, uint64_t seed, int rank, int world)
    : splits_(std::move(splits)),
      batch_size_(batch_size),
      sampler_(splits_.train.n, batch_size, seed, rank, world) {
    ESPER_CHECK_INPUT(splits_.train.n >= batch_size, "data.batch_size: ", batch_size,
                      " exceeds the ", splits_.train.n, " training samples");
    x_.resize(size_t(batch_size * splits_.train.features));
    y_.resize(size_t(batch_size));
}

int64_t FeatureData::classes() const {
    return std::max(splits_.train.classes, splits_.test.classes);
}

Batch FeatureData::train_batch(int64_t step) {
    const int64_t spe = sampler_.batches_per_epoch();
    const int64_t n = splits_.train.features * batch_size_;
    if (x_.size() < size_t(n)) x_.resize(size_t(n));
    gather_batch(splits_.train, sampler_.batch(step / spe, step % spe), x_.data(), y_.data());
    return features_batch(x_.data(), y_.data(), int32_t(batch_size_));
}

Batch FeatureData::eval_batch(int64_t first, int64_t count) {
    const Dataset& te = splits_.test;
    idx_.resize(size_t(count));
    for (int64_t i = 0; i < count; ++i) idx_[size_t(i)] = first + i;
    x_.resize(std::max(x_.size(), size_t(count * te.features)));
    y_.resize(std::max(y_.size(), size_t(count)));
    gather_batch(te, idx_, x_.data(), y_.data());
    return features_batch(x_.data(), y_.data(), int32_t(count));
}

TextData::TextData(TextCorpus corpus, int64_t batch_size, int64_t context, int64_t eval_windows,
                   uint64_t seed, int rank)
    : corpus_(std::move(corpus)),
      batch_size_(batch_size),
      context_(context),
      eval_windows_(text_validation_windows(corpus_.validation, context, eval_windows)),
      steps_per_epoch_(std::max<int64_t>(
          1, int64_t(corpus_.train.size()) / std::max<int64_t>(1, batch_size * context))),
      seed_(seed),
      rank_(rank) {
    tokens_.resize(size_t(std::max(batch_size, eval_windows_) * context));
    targets_.resize(tokens_.size());
}

Batch TextData::train_batch(int64_t step) {
    for (int64_t r = 0; r < batch_size_; ++r)
        text_train_window(corpus_.train, context_, seed_, step, rank_, r,
                          tokens_.data() + r * context_, targets_.data() + r * context_);
    Batch b;
    b.samples = int32_t(batch_size_);
    b.tokens = tokens_.data();
    b.targets = targets_.data();
    b.rows = int32_t(batch_size_ * context_);
    return b;
}

Batch TextData::eval_batch(int64_t first, int64_t count) {
    ESPER_REQUIRE(first >= 0 && count > 0 && first + count <= eval_windows_, "eval windows [",
                  first, ", ", first + count, ") of ", eval_windows_);
    if (tokens_.size() < size_t(count * context_)) {
        tokens_.resize(size_t(count * context_));
        targets_.resize(tokens_.size());
    }
    for (int64_t i = 0; i < count; ++i)
        text_validation_window(corpus_.validation, context_, eval_windows_, first + i,
                               tokens_.data() + i * context_, targets_.data() + i * context_);
    Batch b;
    b.samples = int32_t(count);
    b.tokens = tokens_.data();
    b.targets = targets_.data();
    b.rows = int32_t(count * context_);
    return b;
}

std::unique_ptr<TrainData> load_train_data(const Config& config, int rank, int world) {
    const DataConfig& d = config.data;
    if (d.dataset == "text") {
        const int64_t T = config.model.transformer.context;
        return std::make_unique<TextData>(load_text_corpus(d.path, d.text.validation_fraction, T),
                                          d.batch_size, T, d.text.eval_windows, config.run.seed,
                                          rank);
    }
    return std::make_unique<FeatureData>(load_data(d, config.run.seed), d.batch_size,
                                         config.run.seed, rank, world);
}

}  // namespace esper::kasmina
