// Byte-level text data of the transformer host (DESIGN §14, `data.dataset: text`): any file of
// bytes, split deterministically into train (the first 1 − f) and validation (the last f), and
// random windows of context + 1 bytes per sample (tokens = the first T bytes, targets = the next
// T). Window offsets are a pure function of (seed, step, rank, row), so resuming needs no RNG
// state and every rank draws its own stream. Validation uses a fixed set of evenly spaced
// windows. Every failure is an esper::Error naming the file and the fix.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kasmina/io/config.h"

namespace esper::kasmina {

struct TextCorpus {
    std::vector<uint8_t> train;
    std::vector<uint8_t> validation;
    std::string description;  // e.g. "text kjv.txt (3,868,415 train bytes, 429,824 validation)"
};

// Reads `path`. Refuses a missing file (naming the Debian package when it is the default
// corpus, kDefaultTextCorpus in io/config.h), an empty file, a file that is not text (NUL bytes,
// or more than 1 % control bytes other than tab/newline/carriage return) and a file whose
// splits cannot hold one window of context + 1 bytes each.
TextCorpus load_text_corpus(const std::string& path, double validation_fraction, int64_t context);

// Row `row` of the training batch at `step` on `rank`: context + 1 bytes starting at a uniformly
// drawn offset. tokens/targets: [context] each.
void text_train_window(std::span<const uint8_t> train, int64_t context, uint64_t seed, int64_t step,
                       int rank, int64_t row, int32_t* tokens, int32_t* targets);
// The i-th of `count` fixed validation windows (evenly spaced over the split).
void text_validation_window(std::span<const uint8_t> validation, int64_t context, int64_t count,
                            int64_t i, int32_t* tokens, int32_t* targets);
// How many validation windows fit without overlap (at least 1, at most `cap`).
int64_t text_validation_windows(std::span<const uint8_t> validation, int64_t context, int64_t cap);

}  // namespace esper::kasmina
