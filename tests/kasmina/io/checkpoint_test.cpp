// Tests of the checkpoint directory format: round trip of every typed field and tensor, tamper
// (a flipped byte in any file), truncation, refusal of another format version (the text manifest
// of version 1 included) and of a malformed manifest, and a crash mid-write leaving the old
// checkpoint loadable.
#include "kasmina/io/checkpoint.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "kasmina/model/tensor.h"
#include "schemas/checkpoint.capnp.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper::kasmina;

namespace {

CheckpointData sample(uint64_t seed, int64_t step) {
    Rng rng(seed);
    std::vector<float> w(257);
    for (float& v : w) v = rng.normal();
    CheckpointData c;
    c.step = step;
    c.run_id = "run-abc";
    c.config_yaml = "model:\n  hidden: [8]\n";
    c.put_floats("weights", w);
    c.put_floats("bias", std::vector<float>{1.5f, -2.0f});
    c.put_floats("empty", std::vector<float>{});
    c.trainer = {step, 300, 12.5, 7, {0.5, 0.25}, 1, {3, 1, 0, 0}};
    c.optimizer.host_steps = step;
    c.optimizer.slot_steps = {{}, {{3, 0}, {1}, {}}};
    c.optimizer.slot_owner = {{}, {{2, -1}, {0}, {}}};
    SeedLayerState layer;
    layer.layer = 1;
    layer.width = 20;
    SeedRow row;
    row.stage = SeedStage::kGrafting;
    row.kind = BlueprintKind::kLowrank;
    row.strategy = GraftingStrategy::kAdaptive;
    row.flags = kSeedFlagHealthMeasured;
    row.slot = 0;
    row.alpha = 0.375f;
    row.steps_in_stage = 4;
    row.error_count = 1;
    row.embargo_until_step = 9;
    row.graft.t = 4.5f;
    row.graft.adaptive_choice = static_cast<uint8_t>(GraftingStrategy::kCosine);
    row.graft.has_ema = 1;
    layer.rows = {row, SeedRow{}};
    layer.measured = {SeedMeasurements{0.75, std::nullopt, 0.5, -0.125, 2.0}, SeedMeasurements{}};
    c.seeds.next_step = step + 1;
    c.seeds.layers = {layer};
    c.seeds.loss_window = {2.0, 1.75};
    c.seeds.last_loss = 1.75;
    c.seeds.last_loss_delta = 0.25;
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

std::vector<uint8_t> read_bytes(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)),
                                std::istreambuf_iterator<char>());
}

// Replaces a checkpoint's manifest and writes the matching manifest.sha256.
void write_manifest(const fs::path& dir, const std::vector<uint8_t>& bytes) {
    std::ofstream(dir / kCheckpointManifest, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    std::ofstream(dir / kCheckpointManifestHash, std::ios::trunc)
        << sha256_hex(bytes.data(), bytes.size()) << "  " << kCheckpointManifest << "\n";
}

// Rewrites a checkpoint's manifest through `edit` (keeping its hash valid).
template <typename F>
void edit_manifest(const fs::path& dir, F&& edit) {
    const std::vector<uint8_t> bytes = read_bytes(dir / kCheckpointManifest);
    kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), bytes.data(), bytes.size());
    capnp::MallocMessageBuilder b;
    capnp::initMessageBuilderFromFlatArrayCopy(words, b);
    edit(b.getRoot<esper::schema::Manifest>());
    const kj::Array<capnp::word> out = capnp::messageToFlatArray(b);
    write_manifest(dir, std::vector<uint8_t>(out.asBytes().begin(), out.asBytes().end()));
}

}  // namespace

TEST_CASE("a checkpoint round-trips every entry bit for bit", "[kasmina][checkpoint]") {
    const fs::path d = scratch_dir("rt");
    const CheckpointData c = sample(1, 150);
    write_checkpoint(d / "150", c);
    const CheckpointData r = read_checkpoint(d / "150");
    CHECK(r.step == 150);
    CHECK(r.run_id == "run-abc");
    CHECK(r.tensors() == c.tensors());
    CHECK(r.config_yaml == c.config_yaml);
    CHECK(r.trainer == c.trainer);
    CHECK(r.optimizer == c.optimizer);
    CHECK(r.seeds == c.seeds);
    CHECK(r == c);
    std::vector<float> bias(2);
    r.floats_into("bias", bias);
    CHECK(bias == std::vector<float>{1.5f, -2.0f});
    std::vector<float> wrong(3);
    CHECK(kind_of([&] { r.floats_into("bias", wrong); }) == esper::ErrorKind::kIntegrity);
    CHECK(kind_of([&] { r.floats_into("absent", wrong); }) == esper::ErrorKind::kIntegrity);
    // No temp directories are left behind after a successful write.
    for (const auto& e : fs::directory_iterator(d)) CHECK(e.path().filename() == "150");
    fs::remove_all(d);
}

TEST_CASE("a flipped byte in any checkpoint file is refused with an integrity error",
          "[kasmina][checkpoint]") {
    const fs::path d = scratch_dir("tamper");
    const CheckpointData c = sample(2, 10);
    std::vector<fs::path> files;
    write_checkpoint(d / "ref", c);
    for (const auto& e : fs::directory_iterator(d / "ref")) files.push_back(e.path().filename());
    REQUIRE(files.size() == 5);  // three tensors + manifest.bin + manifest.sha256
    for (const fs::path& f : files) {
        const size_t size = fs::file_size(d / "ref" / f);
        if (size == 0) continue;  // the empty tensor: nothing to flip
        // Every byte of the manifest (a Cap'n Proto message has padding and pointers, none of
        // which may slip through); three places in the other files.
        std::vector<size_t> places;
        if (f == kCheckpointManifest) {
            for (size_t at = 0; at < size; ++at) places.push_back(at);
        } else {
            places = {size_t(0), std::min<size_t>(5, size - 1), size - 1};
        }
        write_checkpoint(d / "t", c);
        for (size_t at : places) {
            INFO(f.string() << " byte " << at);
            flip_byte(d / "t" / f, at);
            std::string msg;
            CHECK(kind_of([&] { read_checkpoint(d / "t"); }, &msg) == esper::ErrorKind::kIntegrity);
            CHECK_THAT(msg, Catch::Contains(f.string()));
            flip_byte(d / "t" / f, at);  // flipped back: the next place starts from a good file
        }
        CHECK(read_checkpoint(d / "t") == c);
    }
    fs::remove_all(d);
}

TEST_CASE("truncated, missing and wrong-version checkpoints are refused", "[kasmina][checkpoint]") {
    const fs::path d = scratch_dir("trunc");
    const CheckpointData c = sample(3, 10);
    write_checkpoint(d / "a", c);
    fs::resize_file(d / "a" / "weights.bin", 100);
    CHECK(kind_of([&] { read_checkpoint(d / "a"); }) == esper::ErrorKind::kIntegrity);

    write_checkpoint(d / "b", c);
    fs::remove(d / "b" / "bias.bin");
    CHECK(kind_of([&] { read_checkpoint(d / "b"); }) == esper::ErrorKind::kIntegrity);

    write_checkpoint(d / "h", c);
    fs::remove(d / "h" / kCheckpointManifestHash);
    CHECK(kind_of([&] { read_checkpoint(d / "h"); }) == esper::ErrorKind::kIntegrity);

    // A manifest of another format version with a valid hash: refused by the version check.
    write_checkpoint(d / "v", c);
    edit_manifest(d / "v", [](esper::schema::Manifest::Builder m) { m.setFormatVersion(99); });
    std::string msg;
    CHECK(kind_of([&] { read_checkpoint(d / "v"); }, &msg) == esper::ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("version 99") && Catch::Contains("reads version 2"));

    // Bytes that are no Cap'n Proto message, under a valid hash.
    write_checkpoint(d / "m", c);
    write_manifest(d / "m", std::vector<uint8_t>(64, 0xff));
    CHECK(kind_of([&] { read_checkpoint(d / "m"); }, &msg) == esper::ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains(kCheckpointManifest));

    CHECK(kind_of([&] { read_checkpoint(d / "nothing"); }) == esper::ErrorKind::kInvalidInput);
    fs::remove_all(d);
}

TEST_CASE("a crash mid-write leaves the old checkpoint loadable and a temp dir behind",
          "[kasmina][checkpoint]") {
    const fs::path d = scratch_dir("crash");
    const CheckpointData old_c = sample(4, 100), new_c = sample(5, 200);
    write_checkpoint(d / "ckpt", old_c);
    CheckpointWriteOptions crash;
    crash.crash_after_files = 1;
    CHECK(kind_of([&] { write_checkpoint(d / "ckpt", new_c, crash); }) ==
          esper::ErrorKind::kFailed);
    int temps = 0;
    for (const auto& e : fs::directory_iterator(d))
        if (e.path().filename().string().find(".tmp-") != std::string::npos) ++temps;
    CHECK(temps == 1);
    const CheckpointData r = read_checkpoint(d / "ckpt");
    CHECK(r.step == 100);
    CHECK(r == old_c);
    // A later successful write replaces it atomically.
    write_checkpoint(d / "ckpt", new_c);
    CHECK(read_checkpoint(d / "ckpt") == new_c);
    fs::remove_all(d);
}

TEST_CASE("a checkpoint of format version 1 (text manifest) is refused with the way forward",
          "[kasmina][checkpoint]") {
    const fs::path d = scratch_dir("v1");
    fs::create_directories(d / "150");
    std::ofstream(d / "150" / "manifest.txt") << "esper-checkpoint 1\nrun_id seed-42\nstep 150\n"
                                                 "manifest-sha256 0000\n";
    std::string msg;
    CHECK(kind_of([&] { read_checkpoint(d / "150"); }, &msg) == esper::ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("manifest.txt") &&
                        Catch::Contains("checkpoint format version 1") &&
                        Catch::Contains("this build reads version 2") && Catch::Contains("re-run"));
    fs::remove_all(d);
}

TEST_CASE("tensor names that could escape or shadow the directory layout are refused",
          "[kasmina][checkpoint]") {
    const fs::path d = scratch_dir("names");
    write_checkpoint(d / "ok", sample(6, 1));
    // A manifest (under a valid hash) naming a file outside the directory, or one that would be
    // the manifest itself.
    for (const std::string& name : {std::string("../x"), std::string("manifest")}) {
        INFO(name);
        fs::remove_all(d / "t");
        fs::copy(d / "ok", d / "t");
        edit_manifest(d / "t", [&](esper::schema::Manifest::Builder m) {
            m.getTensors()[0].setName(name);
            m.getTensors()[0].setFile(name + ".bin");
        });
        std::string msg;
        CHECK(kind_of([&] { read_checkpoint(d / "t"); }, &msg) == esper::ErrorKind::kIntegrity);
        CHECK_THAT(msg, Catch::Contains("bad tensor name"));
    }
    fs::remove_all(d);
}
