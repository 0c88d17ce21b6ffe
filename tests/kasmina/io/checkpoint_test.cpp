// Tests of the checkpoint directory format: round trip, tamper (a flipped byte in any file),
// truncation, version refusal, and a crash mid-write leaving the old checkpoint loadable.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "kasmina/io/checkpoint.h"
#include "kasmina/model/tensor.h"

namespace fs = std::filesystem;
using namespace esper::kasmina;

namespace {

fs::path temp_dir(const std::string& tag) {
    fs::path d = fs::temp_directory_path() / ("esper_ckpt_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

CheckpointData sample(uint64_t seed, int64_t step) {
    Rng rng(seed);
    std::vector<float> w(257);
    for (float& v : w) v = rng.normal();
    CheckpointData c;
    c.step = step;
    c.run_id = "run-abc";
    c.put_floats("weights", w);
    c.put_text("config", "model:\n  hidden: [8]\n");
    ByteWriter bw;
    bw.pod<int64_t>(step);
    bw.str("hello");
    std::vector<uint32_t> arr = {1, 2, 3};
    bw.array<uint32_t>(arr);
    c.put("state", bw.take());
    return c;
}

esper::ErrorKind kind_of(const std::function<void()>& fn, std::string* msg = nullptr) {
    try {
        fn();
    } catch (const esper::Error& e) {
        if (msg) *msg = e.what();
        return e.kind();
    }
    FAIL("no error thrown");
    return esper::ErrorKind::kFailed;
}

void flip_byte(const fs::path& p, size_t at) {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(std::streamoff(at));
    char c;
    f.get(c);
    f.seekp(std::streamoff(at));
    f.put(char(c ^ 0x10));
}

}  // namespace

TEST_CASE("a checkpoint round-trips every entry bit for bit", "[kasmina][checkpoint]") {
    const fs::path d = temp_dir("rt");
    const CheckpointData c = sample(1, 150);
    write_checkpoint(d / "150", c);
    const CheckpointData r = read_checkpoint(d / "150");
    CHECK(r.step == 150);
    CHECK(r.run_id == "run-abc");
    CHECK(r.entries() == c.entries());
    ByteReader br(r.bytes("state"), "state");
    CHECK(br.pod<int64_t>() == 150);
    CHECK(br.str() == "hello");
    CHECK(br.array<uint32_t>() == std::vector<uint32_t>{1, 2, 3});
    br.expect_end();
    // No temp directories are left behind after a successful write.
    for (const auto& e : fs::directory_iterator(d)) CHECK(e.path().filename() == "150");
    fs::remove_all(d);
}

TEST_CASE("a flipped byte in any checkpoint file is refused with an integrity error",
          "[kasmina][checkpoint]") {
    const fs::path d = temp_dir("tamper");
    const CheckpointData c = sample(2, 10);
    std::vector<fs::path> files;
    write_checkpoint(d / "ref", c);
    for (const auto& e : fs::directory_iterator(d / "ref")) files.push_back(e.path().filename());
    REQUIRE(files.size() == 4);  // three entries + manifest
    for (const fs::path& f : files) {
        for (size_t at : {size_t(0), size_t(5), fs::file_size(d / "ref" / f) - 1}) {
            write_checkpoint(d / "t", c);
            flip_byte(d / "t" / f, at);
            std::string msg;
            CHECK(kind_of([&] { read_checkpoint(d / "t"); }, &msg) == esper::ErrorKind::kIntegrity);
            CHECK_THAT(msg, Catch::Contains(f.string()));
        }
    }
    fs::remove_all(d);
}

TEST_CASE("truncated, missing and wrong-version checkpoints are refused", "[kasmina][checkpoint]") {
    const fs::path d = temp_dir("trunc");
    const CheckpointData c = sample(3, 10);
    write_checkpoint(d / "a", c);
    fs::resize_file(d / "a" / "weights.bin", 100);
    CHECK(kind_of([&] { read_checkpoint(d / "a"); }) == esper::ErrorKind::kIntegrity);

    write_checkpoint(d / "b", c);
    fs::remove(d / "b" / "state.bin");
    CHECK(kind_of([&] { read_checkpoint(d / "b"); }) == esper::ErrorKind::kIntegrity);

    // A manifest of another format version with a valid hash: refused by the version check.
    write_checkpoint(d / "v", c);
    std::ifstream in(d / "v" / kCheckpointManifest);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    text = text.substr(0, text.rfind("manifest-sha256 "));
    text.replace(0, text.find('\n'), "esper-checkpoint 99");
    text += "manifest-sha256 " + sha256_hex(text.data(), text.size()) + "\n";
    std::ofstream(d / "v" / kCheckpointManifest, std::ios::trunc) << text;
    std::string msg;
    CHECK(kind_of([&] { read_checkpoint(d / "v"); }, &msg) == esper::ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("version 99"));

    CHECK(kind_of([&] { read_checkpoint(d / "nothing"); }) == esper::ErrorKind::kInvalidInput);
    fs::remove_all(d);
}

TEST_CASE("a crash mid-write leaves the old checkpoint loadable and a temp dir behind",
          "[kasmina][checkpoint]") {
    const fs::path d = temp_dir("crash");
    const CheckpointData old_c = sample(4, 100), new_c = sample(5, 200);
    write_checkpoint(d / "ckpt", old_c);
    CheckpointWriteOptions crash;
    crash.crash_after_files = 1;
    CHECK(kind_of([&] { write_checkpoint(d / "ckpt", new_c, crash); }) == esper::ErrorKind::kFailed);
    int temps = 0;
    for (const auto& e : fs::directory_iterator(d))
        if (e.path().filename().string().find(".tmp-") != std::string::npos) ++temps;
    CHECK(temps == 1);
    const CheckpointData r = read_checkpoint(d / "ckpt");
    CHECK(r.step == 100);
    CHECK(r.entries() == old_c.entries());
    // A later successful write replaces it atomically.
    write_checkpoint(d / "ckpt", new_c);
    CHECK(read_checkpoint(d / "ckpt").entries() == new_c.entries());
    fs::remove_all(d);
}

TEST_CASE("byte reader refuses overruns and trailing bytes", "[kasmina][checkpoint]") {
    ByteWriter w;
    w.pod<int32_t>(5);
    std::vector<uint8_t> b = w.take();
    {
        ByteReader r(b, "x");
        CHECK(kind_of([&] { r.pod<int64_t>(); }) == esper::ErrorKind::kIntegrity);
    }
    {
        ByteReader r(b, "x");
        r.pod<int16_t>();
        CHECK(kind_of([&] { r.expect_end(); }) == esper::ErrorKind::kIntegrity);
    }
}
