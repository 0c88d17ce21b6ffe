// Checkpoint directory format, atomic write and verified read (see checkpoint.h).
#include "kasmina/io/checkpoint.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace esper::kasmina {

namespace fs = std::filesystem;

namespace {

bool valid_name(const std::string& n) {
    if (n.empty() || n.size() > 100 || n == "." || n == ".." || n == "manifest.txt") return false;
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
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
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

void CheckpointData::put(const std::string& name, std::vector<uint8_t> bytes) {
    ESPER_REQUIRE(valid_name(name), "bad checkpoint entry name '", name, "'");
    entries_[name] = std::move(bytes);
}

void CheckpointData::put_floats(const std::string& name, std::span<const float> v) {
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    put(name, std::vector<uint8_t>(p, p + v.size_bytes()));
}

void CheckpointData::put_text(const std::string& name, const std::string& text) {
    put(name, std::vector<uint8_t>(text.begin(), text.end()));
}

const std::vector<uint8_t>& CheckpointData::bytes(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) ESPER_THROW(kIntegrity, "checkpoint lacks entry '", name, "'");
    return it->second;
}

void CheckpointData::floats_into(const std::string& name, std::span<float> out) const {
    const std::vector<uint8_t>& b = bytes(name);
    if (b.size() != out.size_bytes())
        ESPER_THROW(kIntegrity, "checkpoint entry '", name, "' has ", b.size(), " bytes, expected ",
                    out.size_bytes(), " (model shape differs from the checkpoint's)");
    std::memcpy(out.data(), b.data(), b.size());
}

std::string CheckpointData::text(const std::string& name) const {
    const std::vector<uint8_t>& b = bytes(name);
    return std::string(b.begin(), b.end());
}

// ---- ByteWriter / ByteReader ----

void ByteWriter::str(const std::string& s) {
    pod<uint64_t>(s.size());
    buf_.insert(buf_.end(), s.begin(), s.end());
}

std::string ByteReader::str() {
    const uint64_t n = pod<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(buf_.data() + pos_), n);
    pos_ += n;
    return s;
}

void ByteReader::expect_end() {
    if (pos_ != buf_.size()) fail(buf_.size() - pos_, " trailing bytes");
}

// ---- write / read ----

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

    std::ostringstream m;
    m << "esper-checkpoint " << kCheckpointFormatVersion << "\n";
    m << "run_id " << (data.run_id.empty() ? "-" : data.run_id) << "\n";
    m << "step " << data.step << "\n";
    int written = 0;
    for (const auto& [name, bytes] : data.entries()) {
        if (options.crash_after_files >= 0 && written >= options.crash_after_files)
            ESPER_THROW(kFailed, "simulated crash while writing checkpoint ", dir.string());
        const std::string file = name + ".bin";
        write_file_synced(tmp / file, bytes.data(), bytes.size());
        m << "entry " << name << " " << file << " " << bytes.size() << " "
          << sha256_hex(bytes.data(), bytes.size()) << "\n";
        ++written;
    }
    std::string manifest = m.str();
    manifest += "manifest-sha256 " + sha256_hex(manifest.data(), manifest.size()) + "\n";
    write_file_synced(tmp / kCheckpointManifest, manifest.data(), manifest.size());
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
    if (!fs::exists(mpath))
        ESPER_THROW(kIntegrity, mpath.string(), ": manifest missing (incomplete checkpoint?)");
    const std::vector<uint8_t> raw = read_all(mpath);
    const std::string text(raw.begin(), raw.end());
    const std::string tag = "manifest-sha256 ";
    const size_t at = text.rfind(tag);
    if (at == std::string::npos || text.back() != '\n')
        ESPER_THROW(kIntegrity, mpath.string(), ": manifest truncated (no closing hash)");
    const std::string want = text.substr(at + tag.size(), text.size() - at - tag.size() - 1);
    if (sha256_hex(text.data(), at) != want)
        ESPER_THROW(kIntegrity, mpath.string(), ": manifest hash mismatch (file modified)");

    std::istringstream in(text.substr(0, at));
    std::string word;
    int version = -1;
    if (!(in >> word >> version) || word != "esper-checkpoint")
        ESPER_THROW(kIntegrity, mpath.string(), ": not an esper checkpoint manifest");
    if (version != kCheckpointFormatVersion)
        ESPER_THROW(kIntegrity, mpath.string(), ": checkpoint format version ", version,
                    ", this build reads version ", kCheckpointFormatVersion);
    CheckpointData data;
    if (!(in >> word >> data.run_id) || word != "run_id" || !(in >> word >> data.step) ||
        word != "step")
        ESPER_THROW(kIntegrity, mpath.string(), ": malformed manifest header");
    if (data.run_id == "-") data.run_id.clear();
    std::string name, file, hash;
    uint64_t size = 0;
    while (in >> word) {
        if (word != "entry" || !(in >> name >> file >> size >> hash))
            ESPER_THROW(kIntegrity, mpath.string(), ": malformed manifest line '", word, "'");
        if (!valid_name(name) || file != name + ".bin")
            ESPER_THROW(kIntegrity, mpath.string(), ": bad entry name '", name, "'");
        std::vector<uint8_t> bytes = read_all(dir / file);
        if (bytes.size() != size)
            ESPER_THROW(kIntegrity, (dir / file).string(), ": ", bytes.size(),
                        " bytes, manifest says ", size, " (truncated file)");
        if (sha256_hex(bytes.data(), bytes.size()) != hash)
            ESPER_THROW(kIntegrity, (dir / file).string(), ": SHA-256 mismatch (file modified)");
        data.put(name, std::move(bytes));
    }
    return data;
}

}  // namespace esper::kasmina
