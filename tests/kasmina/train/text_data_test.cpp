// Byte-level text data: deterministic split, windows whose targets are the next bytes, per-rank
// streams that are a pure function of the step, and a one-line refusal of every bad file.
#include "kasmina/train/text_data.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

using namespace esper;
using namespace esper::kasmina;
namespace fs = std::filesystem;

namespace {

std::string write_file(const std::string& name, const std::string& bytes) {
    const fs::path p = fs::temp_directory_path() / ("esper_text_" + name);
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
}

std::string sample_text(size_t n) {
    const std::string words = "In the beginning was the word, and the word was with text.\n";
    std::string s;
    while (s.size() < n) s += words;
    s.resize(n);
    return s;
}

}  // namespace

TEST_CASE("a text file splits into train and a validation tail of the requested fraction",
          "[kasmina][data][text]") {
    const std::string text = sample_text(1000);
    const TextCorpus c = load_text_corpus(write_file("split.txt", text), 0.1, 16);
    CHECK(c.validation.size() == 100);
    CHECK(c.train.size() == 900);
    CHECK(std::string(c.train.begin(), c.train.end()) == text.substr(0, 900));
    CHECK(std::string(c.validation.begin(), c.validation.end()) == text.substr(900));
    CHECK(c.description.find("900 train bytes") != std::string::npos);
}

TEST_CASE("training windows hold the next byte as target and depend only on seed, step, rank, row",
          "[kasmina][data][text]") {
    const TextCorpus c = load_text_corpus(write_file("windows.txt", sample_text(5000)), 0.1, 32);
    const int64_t T = 32;
    std::vector<int32_t> tok(T), tgt(T), tok2(T), tgt2(T);
    std::set<std::vector<int32_t>> seen;
    for (int64_t row = 0; row < 8; ++row) {
        text_train_window(c.train, T, 7, 3, 0, row, tok.data(), tgt.data());
        for (int64_t t = 0; t + 1 < T; ++t) CHECK(tgt[size_t(t)] == tok[size_t(t + 1)]);
        // The same window is found in the split at some offset (the last target included).
        const std::string hay(c.train.begin(), c.train.end());
        std::string needle;
        for (int32_t v : tok) needle += char(v);
        needle += char(tgt.back());
        CHECK(hay.find(needle) != std::string::npos);
        text_train_window(c.train, T, 7, 3, 0, row, tok2.data(), tgt2.data());
        CHECK(tok == tok2);
        seen.insert(tok);
    }
    CHECK(seen.size() > 4);  // rows draw different offsets
    text_train_window(c.train, T, 7, 3, 1, 0, tok2.data(), tgt2.data());
    text_train_window(c.train, T, 7, 3, 0, 0, tok.data(), tgt.data());
    CHECK(tok != tok2);  // each rank its own stream
    text_train_window(c.train, T, 7, 4, 0, 0, tok2.data(), tgt2.data());
    CHECK(tok != tok2);  // and each step
}

TEST_CASE("validation windows are fixed, evenly spaced and cover the split's end",
          "[kasmina][data][text]") {
    const TextCorpus c = load_text_corpus(write_file("val.txt", sample_text(4000)), 0.25, 16);
    const int64_t n = text_validation_windows(c.validation, 16, 1000);
    CHECK(n == (1000 - 1) / 16);
    CHECK(text_validation_windows(c.validation, 16, 5) == 5);
    std::vector<int32_t> tok(16), tgt(16);
    text_validation_window(c.validation, 16, n, n - 1, tok.data(), tgt.data());
    CHECK(tgt.back() == c.validation.back());
    text_validation_window(c.validation, 16, n, 0, tok.data(), tgt.data());
    CHECK(tok.front() == c.validation.front());
}

TEST_CASE("missing, empty, binary and too-short text files are refused with one clear line",
          "[kasmina][data][text]") {
    CHECK_THROWS_WITH(load_text_corpus("/nonexistent/corpus.txt", 0.1, 8),
                      Catch::Contains("text file not found"));
    CHECK_THROWS_WITH(load_text_corpus(write_file("empty.txt", ""), 0.1, 8),
                      Catch::Contains("empty"));
    std::string garbage(400, '\x01');
    CHECK_THROWS_WITH(load_text_corpus(write_file("ctrl.bin", garbage), 0.1, 8),
                      Catch::Contains("not a text file"));
    std::string with_nul = sample_text(400);
    with_nul[17] = '\0';
    CHECK_THROWS_WITH(load_text_corpus(write_file("nul.bin", with_nul), 0.1, 8),
                      Catch::Contains("NUL"));
    CHECK_THROWS_WITH(load_text_corpus(write_file("short.txt", sample_text(100)), 0.1, 16),
                      Catch::Contains("context + 1 = 17"));
    CHECK_THROWS_WITH(load_text_corpus(fs::temp_directory_path().string(), 0.1, 8),
                      Catch::Contains("directory"));
}
