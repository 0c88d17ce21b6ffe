// Checkpoint directories: atomic write and verified read (see checkpoint.h); the manifest's
// Cap'n Proto encoding is in state_codec.cpp.
#include "kasmina/io/checkpoint.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "core/check.h"
#include "kasmina/io/state_codec.h"

namespace esper::kasmina {

namespace fs = std::filesystem;

namespace {

bool valid_name(const std::string& n) {
    // "manifest" would collide with manifest.bin.
    if (n.empty() || n.size() > 100 || n == "." || n == ".." || n == "manifest") return false;
    for (char c : n)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'))
            return false;
    return true;
}

void write_file_synced(const fs::path& path, const void* data, size_t size) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) ESPER_THROW(kFailed, path.string(), ": cannot create: ", std::strerror(errno));
    const auto* p = static_cast<const uint8_t*>(data);
    size_t done = 0;
    while (done < size) {
        const ssize_t n = ::write(fd, p + done, size - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            const int e = errno;
            ::close(fd);
            ESPER_THROW(kFailed, path.string(), ": write failed: ", std::strerror(e));
        }
        done += size_t(n);
    }
    if (::fsync(fd) != 0) {
        const int e = errno;
        ::close(fd);
        ESPER_THROW(kFailed, path.string(), ": fsync failed: ", std::strerror(e));
    }
    ::close(fd);
}

void fsync_dir(const fs::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;  // best effort: some filesystems refuse directory fds
    ::fsync(fd);
    ::close(fd);
}

std::vector<uint8_t> read_all(const fs::path& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) ESPER_THROW(kIntegrity, path.string(), ": checkpoint file missing or unreadable");
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)),
                                std::istreambuf_iterator<char>());
}

// Every tensor of a checkpoint is float32 parameters or optimizer moments, finite in any state a
// run can continue from. A NaN-weight checkpoint whose hashes were rewritten used to resume and
// train with loss: null every step.
void refuse_non_finite(const std::vector<uint8_t>& bytes, const fs::path& file) {
    if (bytes.size() % sizeof(float) != 0)
        ESPER_THROW(kIntegrity, file.string(), ": ", bytes.size(),
                    " bytes is not a whole number of float32 values");
    for (size_t i = 0; i < bytes.size() / sizeof(float); ++i) {
        float v;
        std::memcpy(&v, bytes.data() + i * sizeof(float), sizeof(float));
        if (!std::isfinite(v))
            ESPER_THROW(kIntegrity, file.string(), ": value ", i, " is not finite (", v,
                        "); a checkpoint with non-finite parameters cannot be resumed");
    }
}

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    ESPER_ASSERT(EVP_Digest(data, size, md, &len, EVP_sha256(), nullptr) == 1);
    static const char* hex = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) {
        s += hex[md[i] >> 4];
        s += hex[md[i] & 15];
    }
    return s;
}

// ---- CheckpointData ----

void CheckpointData::put_floats(const std::string& name, std::span<const float> v) {
    ESPER_REQUIRE(valid_name(name), "bad checkpoint tensor name '", name, "'");
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    tensors_[name] = std::vector<uint8_t>(p, p + v.size_bytes());
}

void CheckpointData::floats_into(const std::string& name, std::span<float> out) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) ESPER_THROW(kIntegrity, "checkpoint lacks tensor '", name, "'");
    const std::vector<uint8_t>& b = it->second;
    if (b.size() != out.size_bytes())
        ESPER_THROW(kIntegrity, "checkpoint tensor '", name, "' has ", b.size(),
                    " bytes, expected ", out.size_bytes(),
                    " (model shape differs from the checkpoint's)");
    if (!b.empty()) std::memcpy(out.data(), b.data(), b.size());
}

// ---- write / read ----

namespace {

std::string manifest_hash_line(const std::vector<uint8_t>& manifest) {
    // sha256sum's format, so `sha256sum -c manifest.sha256` checks the manifest by hand.
    return sha256_hex(manifest.data(), manifest.size()) + "  " + kCheckpointManifest + "\n";
}

// A directory written by a build of format version 1 holds a text manifest.txt whose first line
// is "esper-checkpoint <version>": refuse it by name, with the way forward.
[[noreturn]] void refuse_text_manifest(const fs::path& path) {
    std::ifstream f(path);
    std::string word;
    int version = -1;
    f >> word >> version;
    if (word != "esper-checkpoint")
        ESPER_THROW(kIntegrity, path.string(), ": not an esper checkpoint manifest");
    ESPER_THROW(kIntegrity, path.string(), ": checkpoint format version ", version,
                " (a text manifest), this build reads version ", kCheckpointFormatVersion,
                " (manifest.bin); re-run the training, or resume this checkpoint with the build "
                "that wrote it");
}

}  // namespace

void write_checkpoint(const fs::path& dir_in, const CheckpointData& data,
                      const CheckpointWriteOptions& options) {
    const fs::path dir = fs::absolute(dir_in).lexically_normal();
    const fs::path parent = dir.parent_path();
    const std::string base = dir.filename().string();
    fs::create_directories(parent);
    const std::string suffix = std::to_string(::getpid());
    const fs::path tmp = parent / ("." + base + ".tmp-" + suffix);
    fs::remove_all(tmp);
    fs::create_directory(tmp);

    std::vector<TensorFileInfo> files;
    for (const auto& [name, bytes] : data.tensors()) {
        if (options.crash_after_files >= 0 && int(files.size()) >= options.crash_after_files)
            ESPER_THROW(kFailed, "simulated crash while writing checkpoint ", dir.string());
        const std::string file = name + ".bin";
        write_file_synced(tmp / file, bytes.data(), bytes.size());
        files.push_back({name, file, bytes.size(), sha256_hex(bytes.data(), bytes.size())});
    }
    const std::vector<uint8_t> manifest = encode_manifest(data, files);
    write_file_synced(tmp / kCheckpointManifest, manifest.data(), manifest.size());
    const std::string hash = manifest_hash_line(manifest);
    write_file_synced(tmp / kCheckpointManifestHash, hash.data(), hash.size());
    fsync_dir(tmp);

    // sync-point: step boundary (checkpoint)
    if (fs::exists(dir)) {
        const fs::path old = parent / ("." + base + ".old-" + suffix);
        fs::remove_all(old);
        fs::rename(dir, old);
        fs::rename(tmp, dir);
        fsync_dir(parent);
        fs::remove_all(old);
    } else {
        fs::rename(tmp, dir);
        fsync_dir(parent);
    }
}

CheckpointData read_checkpoint(const fs::path& dir) {
    if (!fs::is_directory(dir))
        ESPER_THROW(kInvalidInput, dir.string(), ": not a checkpoint directory");
    const fs::path mpath = dir / kCheckpointManifest;
    const fs::path hpath = dir / kCheckpointManifestHash;
    if (!fs::exists(mpath)) {
        if (fs::exists(dir / "manifest.txt")) refuse_text_manifest(dir / "manifest.txt");
        ESPER_THROW(kIntegrity, mpath.string(), ": manifest missing (incomplete checkpoint?)");
    }
    if (!fs::exists(hpath))
        ESPER_THROW(kIntegrity, hpath.string(), ": manifest hash missing (incomplete checkpoint?)");
    const std::vector<uint8_t> manifest = read_all(mpath);
    const std::vector<uint8_t> hash = read_all(hpath);
    if (std::string(hash.begin(), hash.end()) != manifest_hash_line(manifest))
        ESPER_THROW(kIntegrity, mpath.string(), ": does not match ", hpath.string(),
                    " (one of them was modified or truncated)");

    CheckpointData data;
    std::vector<TensorFileInfo> files;
    decode_manifest(manifest, mpath.string(), data, files);
    for (const TensorFileInfo& f : files) {
        if (!valid_name(f.name) || f.file != f.name + ".bin")
            ESPER_THROW(kIntegrity, mpath.string(), ": bad tensor name '", f.name, "'");
        if (data.has(f.name))
            ESPER_THROW(kIntegrity, mpath.string(), ": tensor '", f.name, "' listed twice");
        std::vector<uint8_t> bytes = read_all(dir / f.file);
        if (bytes.size() != f.size_bytes)
            ESPER_THROW(kIntegrity, (dir / f.file).string(), ": ", bytes.size(),
                        " bytes, manifest says ", f.size_bytes, " (truncated file)");
        if (sha256_hex(bytes.data(), bytes.size()) != f.sha256)
            ESPER_THROW(kIntegrity, (dir / f.file).string(), ": SHA-256 mismatch (file modified)");
        refuse_non_finite(bytes, dir / f.file);
        data.tensors_[f.name] = std::move(bytes);
    }
    return data;
}

}  // namespace esper::kasmina
