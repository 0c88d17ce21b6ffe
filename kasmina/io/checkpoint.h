// Checkpoint directories (DESIGN §4.7): `manifest.bin`, one Cap'n Proto Manifest
// (schemas/checkpoint.capnp: format version, run id, step, config, trainer/optimizer scalars,
// seed state and the list of tensor files with their sizes and SHA-256), `manifest.sha256` (its
// hash, sha256sum format, so a flipped byte anywhere is an integrity error) and one raw float32
// file per tensor. Written to a temp directory, every file fsync'ed, then renamed into place: a
// crash leaves the old or the new checkpoint, never a mix. Reading verifies everything before
// returning anything; nothing read is ever executed. This header stays free of Cap'n Proto (the
// CUDA backend includes it through optimizer.h); the encoding is in state_codec.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "kasmina/lifecycle/seed_manager.h"

namespace esper::kasmina {

// 2: Cap'n Proto manifest.bin + manifest.sha256. 1 (refused): text manifest.txt.
inline constexpr int kCheckpointFormatVersion = 2;
inline constexpr const char* kCheckpointManifest = "manifest.bin";
inline constexpr const char* kCheckpointManifestHash = "manifest.sha256";

// The trainer's state besides tensors (kasmina/train/trainer.cpp fills and reads it).
struct TrainerScalars {
    int64_t step = 0;
    int64_t total_steps = 0;  // of the writer's config; informative only
    double epoch_loss_sum = 0.0;
    int64_t epoch_loss_steps = 0;
    std::vector<double> governor_window;  // oldest first
    int64_t governor_trips = 0;
    std::vector<int64_t> model_structure;  // Model::structure()
    bool operator==(const TrainerScalars&) const = default;
};

// The optimizer's state besides its moment tensors (kasmina/train/optimizer.cpp).
struct OptimizerScalars {
    int64_t host_steps = 0;
    // [layer][kind][slot]: updates taken by the slot's seed and that seed (-1 = none). A layer's
    // kind list is empty until its first blueprint update, then has kNumBlueprintKinds entries.
    std::vector<std::vector<std::vector<int64_t>>> slot_steps, slot_owner;
    bool operator==(const OptimizerScalars&) const = default;
};

// The content of a checkpoint: typed state plus named raw float32 tensors (names:
// [A-Za-z0-9_.-], at most 100 chars, not "manifest"). Also the trainer's in-memory
// last-known-good snapshot for the governor.
class CheckpointData {
public:
    int64_t step = 0;
    std::string run_id;
    std::string config_yaml;  // for the record; a resume takes its config from the caller
    TrainerScalars trainer;
    OptimizerScalars optimizer;
    SeedManagerSnapshot seeds;

    void put_floats(const std::string& name, std::span<const float> values);
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    // Throws Error(kIntegrity) when the tensor is missing or has another size than `out`.
    void floats_into(const std::string& name, std::span<float> out) const;
    // Raw little-endian bytes of every tensor, by name.
    const std::map<std::string, std::vector<uint8_t>>& tensors() const { return tensors_; }
    bool operator==(const CheckpointData&) const = default;

private:
    friend CheckpointData read_checkpoint(const std::filesystem::path& dir);
    std::map<std::string, std::vector<uint8_t>> tensors_;
};

struct CheckpointWriteOptions {
    // Test-only: throw Error(kFailed) after writing this many tensor files, leaving the temp
    // directory behind as a crashed writer would. -1 = off.
    int crash_after_files = -1;
};

// Writes `data` as directory `dir` (replacing an existing checkpoint there atomically).
void write_checkpoint(const std::filesystem::path& dir, const CheckpointData& data,
                      const CheckpointWriteOptions& options = {});
// Reads and verifies `dir`; throws Error(kIntegrity) naming the file on any mismatch (a missing,
// truncated or modified file, a malformed manifest, another format version) and
// Error(kInvalidInput) when `dir` is not a directory.
CheckpointData read_checkpoint(const std::filesystem::path& dir);

std::string sha256_hex(const void* data, size_t size);

}  // namespace esper::kasmina
