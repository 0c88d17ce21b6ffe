// libFuzzer harness: the checkpoint manifest decoder (kasmina/io/state_codec.h). The manifest's
// bytes are verified against their hash before decoding, but the decoder must not rely on it: a
// crafted manifest is refused with esper::Error(kIntegrity), never a crash or a huge allocation.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/error.h"
#include "kasmina/io/checkpoint.h"
#include "kasmina/io/state_codec.h"
#include "tests/fuzz/quiet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    esper::kasmina::CheckpointData out;
    std::vector<esper::kasmina::TensorFileInfo> files;
    try {
        esper::kasmina::decode_manifest(std::span(data, size), "fuzz/manifest.bin", out, files);
    } catch (const esper::Error&) {
    }
    return 0;
}
