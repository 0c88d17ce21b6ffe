// libFuzzer harness: the run-config YAML readers. The same text through Kasmina's reader
// (kasmina/io/config.h: every section, repeated keys, the memory estimate against a fixed 4 GiB)
// and Tamiyo's (its tamiyo: section). Bad input must be refused with esper::Error, nothing else.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "kasmina/io/config.h"
#include "tamiyo/config.h"
#include "tests/fuzz/quiet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        const esper::kasmina::Config c =
            esper::kasmina::parse_config(text, "fuzz.yaml", uint64_t{4} << 30);
        // What the reader accepts, its writer writes back readable to the same value.
        if (esper::kasmina::parse_config(esper::kasmina::config_to_yaml(c), "effective.yaml", 0) !=
            c)
            __builtin_trap();
    } catch (const esper::Error&) {
    }
    try {
        (void)esper::tamiyo::parse_config(text, "fuzz.yaml");
    } catch (const esper::Error&) {
    }
    return 0;
}
