// Tests of kasmina/data: IDX and .npy readers (good and malformed files), the teacher task and
// the deterministic sampler. Files are written to a fresh temp directory per test.
#include "kasmina/train/data.h"

#include <zlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper::kasmina;

namespace {

void write_gz(const fs::path& p, const std::vector<uint8_t>& bytes) {
    gzFile f = gzopen(p.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
    gzclose(f);
}

std::vector<uint8_t> idx_bytes(uint8_t dims, std::vector<uint32_t> shape,
                               const std::vector<uint8_t>& payload) {
    std::vector<uint8_t> b = {0, 0, 0x08, dims};
    for (uint32_t d : shape) {
        b.push_back(uint8_t(d >> 24));
        b.push_back(uint8_t(d >> 16));
        b.push_back(uint8_t(d >> 8));
        b.push_back(uint8_t(d));
    }
    b.insert(b.end(), payload.begin(), payload.end());
    return b;
}

void write_npy(const fs::path& p, const std::string& descr, const std::string& shape,
               const void* data, size_t bytes) {
    std::string header =
        "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::ofstream f(p, std::ios::binary);
    f.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = uint16_t(header.size());
    f.write(reinterpret_cast<const char*>(&len), 2);
    f.write(header.data(), std::streamsize(header.size()));
    f.write(static_cast<const char*>(data), std::streamsize(bytes));
}

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const esper::Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("IDX images and labels round-trip through gzip", "[kasmina][data]") {
    const fs::path d = scratch_dir("idx");
    std::vector<uint8_t> pix(3 * 2 * 2);
    for (size_t i = 0; i < pix.size(); ++i) pix[i] = uint8_t(17 * i + 3);
    write_gz(d / "img.gz", idx_bytes(3, {3, 2, 2}, pix));
    write_gz(d / "lab.gz", idx_bytes(1, {3}, {7, 0, 9}));
    Dataset ds = read_idx_images((d / "img.gz").string());
    CHECK(ds.n == 3);
    CHECK(ds.features == 4);
    for (size_t i = 0; i < pix.size(); ++i) CHECK(ds.x[i] == float(pix[i]) / 255.0f);
    CHECK(read_idx_labels((d / "lab.gz").string()) == std::vector<int32_t>{7, 0, 9});
    fs::remove_all(d);
}

TEST_CASE("malformed IDX files are refused naming the file", "[kasmina][data]") {
    const fs::path d = scratch_dir("badidx");
    write_gz(d / "trunc.gz", idx_bytes(3, {3, 2, 2}, std::vector<uint8_t>(11, 5)));
    write_gz(d / "magic.gz", {1, 2, 3, 4, 5, 6, 7, 8});
    write_gz(d / "dims.gz", idx_bytes(1, {3}, {1, 2, 3}));
    {
        std::ofstream f(d / "notgz.gz", std::ios::binary);
        f << "\x1f\x8b\x08garbage-that-is-not-deflate";
    }
    CHECK_THAT(error_of([&] { read_idx_images((d / "trunc.gz").string()); }),
               Catch::Contains("trunc.gz") && Catch::Contains("truncated"));
    CHECK_THAT(error_of([&] { read_idx_images((d / "magic.gz").string()); }),
               Catch::Contains("magic.gz") && Catch::Contains("magic"));
    CHECK_THAT(error_of([&] { read_idx_images((d / "dims.gz").string()); }),
               Catch::Contains("dimensions"));
    CHECK_THAT(error_of([&] { read_idx_images((d / "notgz.gz").string()); }),
               Catch::Contains("notgz.gz"));
    fs::remove_all(d);
}

TEST_CASE("a missing Fashion-MNIST directory names the Debian package", "[kasmina][data]") {
    const std::string msg = error_of([] { load_fashion_mnist("/nonexistent/fashion"); });
    CHECK_THAT(msg,
               Catch::Contains("dataset-fashion-mnist") && Catch::Contains("/nonexistent/fashion"));
    const fs::path d = scratch_dir("emptyfm");
    CHECK_THAT(
        error_of([&] { load_fashion_mnist(d.string()); }),
        Catch::Contains("train-images-idx3-ubyte.gz") && Catch::Contains("dataset-fashion-mnist"));
    fs::remove_all(d);
}

TEST_CASE("the installed Fashion-MNIST files load with the expected shapes", "[kasmina][data]") {
    const std::string dir = "/usr/share/datasets/fashion-mnist";
    if (!fs::exists(dir + "/t10k-images-idx3-ubyte.gz")) {
        WARN("dataset-fashion-mnist not installed; skipped");
        return;
    }
    Dataset test = read_idx_images(dir + "/t10k-images-idx3-ubyte.gz");
    CHECK(test.n == 10000);
    CHECK(test.features == 784);
    std::vector<int32_t> labels = read_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz");
    REQUIRE(labels.size() == 10000);
    std::set<int32_t> classes(labels.begin(), labels.end());
    CHECK(classes.size() == 10);
}

TEST_CASE(".npy features and labels load and malformed ones are refused", "[kasmina][data]") {
    const fs::path d = scratch_dir("npy");
    std::vector<float> x = {0.5f, -1.25f, 3.0f, 4.5f, 2.0f, -7.0f};
    std::vector<int64_t> y = {2, 0, 1};
    write_npy(d / "x.npy", "<f4", "(3, 2)", x.data(), x.size() * 4);
    write_npy(d / "y.npy", "<i8", "(3,)", y.data(), y.size() * 8);
    Dataset ds = load_npy((d / "x.npy").string(), (d / "y.npy").string());
    CHECK(ds.n == 3);
    CHECK(ds.features == 2);
    CHECK(ds.classes == 3);
    CHECK(std::vector<float>(ds.x.begin(), ds.x.end()) == x);
    CHECK(ds.y == std::vector<int32_t>{2, 0, 1});

    write_npy(d / "short.npy", "<f4", "(3, 2)", x.data(), 20);
    CHECK_THAT(error_of([&] { load_npy((d / "short.npy").string(), (d / "y.npy").string()); }),
               Catch::Contains("short.npy") && Catch::Contains("truncated"));
    write_npy(d / "i4x.npy", "<i4", "(3, 2)", x.data(), 24);
    CHECK_THAT(error_of([&] { load_npy((d / "i4x.npy").string(), (d / "y.npy").string()); }),
               Catch::Contains("dtype"));
    write_npy(d / "y2.npy", "<i8", "(2,)", y.data(), 16);
    CHECK_THAT(error_of([&] { load_npy((d / "x.npy").string(), (d / "y2.npy").string()); }),
               Catch::Contains("y2.npy"));
    {
        std::ofstream f(d / "junk.npy", std::ios::binary);
        f << "PK\x03\x04 this is a zip";
    }
    CHECK_THAT(error_of([&] { load_npy((d / "junk.npy").string(), (d / "y.npy").string()); }),
               Catch::Contains("junk.npy") && Catch::Contains("magic"));
    CHECK_THAT(error_of([&] { load_npy((d / "none.npy").string(), (d / "y.npy").string()); }),
               Catch::Contains("none.npy"));
    fs::remove_all(d);
}

TEST_CASE("teacher data is deterministic in the seed and uses every class", "[kasmina][data]") {
    TeacherConfig c;
    c.train_samples = 512;
    c.test_samples = 128;
    c.features = 16;
    c.classes = 4;
    c.hidden = 32;
    DataSplits a = make_teacher(c, 7), b = make_teacher(c, 7), other = make_teacher(c, 8);
    CHECK(a.train.x == b.train.x);
    CHECK(a.train.y == b.train.y);
    CHECK(a.train.x != other.train.x);
    std::set<int32_t> classes(a.train.y.begin(), a.train.y.end());
    CHECK(classes.size() == 4);
}

TEST_CASE("sampler order depends only on seed and epoch and shards partition the data",
          "[kasmina][data]") {
    Sampler s1(103, 10, 5), s2(103, 10, 5);
    CHECK(s1.batches_per_epoch() == 10);
    std::vector<int64_t> e0 = s1.batch(0, 3), e1 = s1.batch(1, 3);
    CHECK(s2.batch(1, 3) == e1);
    CHECK(s2.batch(0, 3) == e0);
    CHECK(e0 != e1);
    std::set<int64_t> seen;
    for (int rank = 0; rank < 2; ++rank) {
        Sampler s(100, 10, 5, rank, 2);
        REQUIRE(s.batches_per_epoch() == 5);
        for (int64_t b = 0; b < 5; ++b)
            for (int64_t i : s.batch(2, b)) CHECK(seen.insert(i).second);
    }
    CHECK(seen.size() == 100);
}
