// Cap'n Proto encoding of kasmina's state values (schemas/checkpoint.capnp): the seed-state
// image (SeedManagerSnapshot ⇄ SeedState), which rank 0 broadcasts to the other ranks, and the
// checkpoint manifest (CheckpointData without its tensor bytes ⇄ Manifest). Decoding copies the
// bytes to aligned words, reads them with explicit traversal limits and checks every value
// (enum ranges, list lengths); anything malformed is Error(kIntegrity) naming `what`. The
// shape checks against a live manager are SeedManager::restore's. Only io/*.cpp include the
// generated schema headers; this header is plain C++.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kasmina/io/checkpoint.h"
#include "kasmina/lifecycle/seed_manager.h"

namespace esper::kasmina {

std::vector<uint8_t> encode_seed_state(const SeedManagerSnapshot& snapshot);
SeedManagerSnapshot decode_seed_state(std::span<const uint8_t> bytes, const std::string& what);

// One tensor file of a checkpoint as the manifest lists it.
struct TensorFileInfo {
    std::string name;
    std::string file;
    uint64_t size_bytes = 0;
    std::string sha256;  // lower-case hex
    bool operator==(const TensorFileInfo&) const = default;
};

// The manifest of `data` (its typed fields; tensors only as `files`), format version
// kCheckpointFormatVersion.
std::vector<uint8_t> encode_manifest(const CheckpointData& data,
                                     const std::vector<TensorFileInfo>& files);
// Decodes a manifest into `data`'s typed fields and `files`. A manifest of another format
// version is refused before any other field is read.
void decode_manifest(std::span<const uint8_t> bytes, const std::string& what, CheckpointData& data,
                     std::vector<TensorFileInfo>& files);

}  // namespace esper::kasmina
