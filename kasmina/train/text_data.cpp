// Byte-level text corpus and its windows (see text_data.h).
#include "kasmina/train/text_data.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace esper::kasmina {

namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void copy_window(std::span<const uint8_t> bytes, int64_t offset, int64_t context, int32_t* tokens,
                 int32_t* targets) {
    for (int64_t t = 0; t < context; ++t) {
        tokens[t] = bytes[size_t(offset + t)];
        targets[t] = bytes[size_t(offset + t + 1)];
    }
}

}  // namespace

TextCorpus load_text_corpus(const std::string& path, double validation_fraction, int64_t context) {
    namespace fs = std::filesystem;
    const bool is_default = path == kDefaultTextCorpus;
    if (!fs::exists(path)) {
        if (is_default)
            ESPER_THROW(kInvalidInput, path,
                        ": default text corpus not found; run scripts/setup-deps.sh (installs "
                        "Debian's bible-kjv and extracts the King James Bible to this file) or "
                        "set data.path to any text file");
        ESPER_THROW(kInvalidInput, path, ": text file not found (data.path)");
    }
    if (fs::is_directory(path))
        ESPER_THROW(kInvalidInput, path, ": is a directory; data.path must name a text file");
    std::ifstream in(path, std::ios::binary);
    if (!in) ESPER_THROW(kInvalidInput, path, ": cannot open: ", std::strerror(errno));
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    if (bytes.empty()) ESPER_THROW(kInvalidInput, path, ": text file is empty");
    int64_t control = 0;
    for (uint8_t b : bytes) {
        if (b == 0)
            ESPER_THROW(kInvalidInput, path,
                        ": contains NUL bytes: not a text file (dataset: text wants plain text)");
        if (b < 0x20 && b != '\n' && b != '\r' && b != '\t') ++control;
    }
    if (control * 100 > int64_t(bytes.size()))
        ESPER_THROW(kInvalidInput, path, ": ", control, " of ", bytes.size(),
                    " bytes are control characters: not a text file");
    const auto n = int64_t(bytes.size());
    const int64_t n_val = std::clamp<int64_t>(int64_t(double(n) * validation_fraction), 0, n);
    const int64_t n_train = n - n_val;
    if (n_train < context + 1 || n_val < context + 1)
        ESPER_THROW(kInvalidInput, path, ": ", n, " bytes split into ", n_train, " train and ",
                    n_val, " validation bytes; each needs at least context + 1 = ", context + 1,
                    " (use a longer file or a smaller model.context)");
    TextCorpus c;
    c.train.assign(bytes.begin(), bytes.begin() + n_train);
    c.validation.assign(bytes.begin() + n_train, bytes.end());
    c.description = "text " + fs::path(path).filename().string() + " (" + std::to_string(n_train) +
                    " train bytes, " + std::to_string(n_val) + " validation)";
    return c;
}

void text_train_window(std::span<const uint8_t> train, int64_t context, uint64_t seed, int64_t step,
                       int rank, int64_t row, int32_t* tokens, int32_t* targets) {
    const auto starts = uint64_t(int64_t(train.size()) - context);  // offsets 0 .. n − T − 1
    const uint64_t h =
        mix(mix(mix(seed ^ 0x7E57ull) + uint64_t(step)) + uint64_t(rank)) + uint64_t(row);
    copy_window(train, int64_t(mix(h) % starts), context, tokens, targets);
}

int64_t text_validation_windows(std::span<const uint8_t> validation, int64_t context, int64_t cap) {
    const int64_t fit = (int64_t(validation.size()) - 1) / context;
    return std::clamp<int64_t>(fit, 1, std::max<int64_t>(1, cap));
}

void text_validation_window(std::span<const uint8_t> validation, int64_t context, int64_t count,
                            int64_t i, int32_t* tokens, int32_t* targets) {
    const int64_t last = int64_t(validation.size()) - context - 1;
    const int64_t offset = count > 1 ? last * i / (count - 1) : 0;
    copy_window(validation, offset, context, tokens, targets);
}

}  // namespace esper::kasmina
