// Key files, run key sets, client and broker security from key directories; see keys.h.
#include "agents/keys.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace esper::agents {

namespace fs = std::filesystem;

namespace {

constexpr std::array<const char*, 4> kRunKeys = {"broker", "agent", "operator", "observer"};

bool valid_role(const std::string& role) {
    return role == kBrokerKeyName || bus::parse_role(role).has_value();
}

bool valid_name(const std::string& name) {
    if (name.empty() || name.size() > 64 || name[0] == '.') return false;
    for (char c : name)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'))
            return false;
    return true;
}

void write_file(const fs::path& path, const std::string& text, mode_t mode) {
    // Created with its final mode, so a secret is never readable by others, even briefly.
    FILE* f = nullptr;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd >= 0) f = ::fdopen(fd, "w");
    if (f == nullptr) ESPER_THROW(kFailed, path.string(), ": cannot write: ", std::strerror(errno));
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok) ESPER_THROW(kFailed, path.string(), ": write failed");
    ::chmod(path.c_str(), mode);  // O_CREAT's mode is masked by umask; a rewrite keeps the old
}

std::string key_yaml(const std::string& role, const bus::CurveKeyPair& pair, bool secret) {
    YAML::Emitter out;
    out << YAML::Comment(secret ? "esper secret key: keep it private (mode 0600); never copy it "
                                  "to an allowlist"
                                : "esper public key: give it to the broker's allowlist");
    out << YAML::BeginMap;
    out << YAML::Key << "role" << YAML::Value << role;
    out << YAML::Key << "public" << YAML::Value << YAML::DoubleQuoted << pair.public_key;
    if (secret)
        out << YAML::Key << "secret" << YAML::Value << YAML::DoubleQuoted << pair.secret_key;
    out << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

}  // namespace

std::vector<fs::path> write_key_pair(const fs::path& dir, const std::string& name,
                                     const std::string& role, bool overwrite) {
    ESPER_CHECK_INPUT(valid_name(name), "key name '", name,
                      "': use letters, digits, '.', '_' and '-' (at most 64)");
    ESPER_CHECK_INPUT(valid_role(role), "role '", role,
                      "': expected observer, operator, agent or broker");
    if (!fs::exists(dir)) {
        fs::create_directories(dir);
        fs::permissions(dir, fs::perms::owner_all);
    }
    const fs::path pub = dir / (name + ".pub"), sec = dir / (name + ".secret");
    for (const fs::path& p : {pub, sec})
        ESPER_CHECK_INPUT(overwrite || !fs::exists(p), p.string(),
                          ": already exists (pass --force to replace it)");
    const bus::CurveKeyPair pair = bus::generate_curve_key_pair();
    write_file(sec, key_yaml(role, pair, true), 0600);
    write_file(pub, key_yaml(role, pair, false), 0644);
    return {pub, sec};
}

void write_run_keys(const fs::path& dir, bool overwrite) {
    for (const char* name : kRunKeys) write_key_pair(dir, name, name, overwrite);
}

KeyFile read_key_file(const fs::path& path) {
    const bool secret = path.extension() == ".secret";
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        ESPER_THROW(kInvalidInput, path.string(),
                    ": cannot read the key file: ", std::strerror(errno));
    if (secret && (st.st_mode & 077) != 0)
        ESPER_THROW(kInvalidInput, path.string(), ": secret key is readable by others (mode ",
                    fmt::format("{:04o}", st.st_mode & 07777), "); run: chmod 600 ", path.string());
    YAML::Node doc;
    try {
        doc = YAML::LoadFile(path.string());
    } catch (const YAML::Exception& e) {
        ESPER_THROW(kInvalidInput, path.string(), ":", e.mark.line + 1,
                    ": not a key file: ", e.msg);
    }
    KeyFile k;
    k.name = path.stem().string();
    auto text = [&](const char* field) {
        const YAML::Node n = doc.IsMap() ? doc[field] : YAML::Node();
        if (!n || !n.IsScalar())
            ESPER_THROW(kInvalidInput, path.string(), ": ", field,
                        ": missing (not a key file "
                        "written by esper keygen)");
        return n.as<std::string>();
    };
    k.role = text("role");
    if (!valid_role(k.role))
        ESPER_THROW(kInvalidInput, path.string(), ": role: '", k.role,
                    "' is not observer, operator, agent or broker");
    k.pair.public_key = text("public");
    if (!bus::is_z85_key(k.pair.public_key))
        ESPER_THROW(kInvalidInput, path.string(), ": public: not a 40-character Z85 key");
    if (secret) {
        k.pair.secret_key = text("secret");
        if (!bus::is_z85_key(k.pair.secret_key) ||
            bus::curve_public_of(k.pair.secret_key) != k.pair.public_key)
            ESPER_THROW(kInvalidInput, path.string(),
                        ": secret: not the secret half of the public key in the same file");
    }
    return k;
}

bus::ClientSecurity client_security(const fs::path& dir, std::initializer_list<bus::Role> roles) {
    ESPER_CHECK_INPUT(fs::is_directory(dir), "--keys ", dir.string(), ": not a directory");
    const KeyFile broker = read_key_file(dir / (std::string(kBrokerKeyName) + ".pub"));
    ESPER_CHECK_INPUT(broker.role == kBrokerKeyName, (dir / "broker.pub").string(), ": role is '",
                      broker.role, "', expected broker");
    bus::ClientSecurity s;
    s.server_key = broker.pair.public_key;
    std::string wanted;
    for (bus::Role r : roles) {
        wanted += (wanted.empty() ? "" : " or ") + std::string(bus::role_name(r));
        const fs::path p = dir / (std::string(bus::role_name(r)) + ".secret");
        if (!fs::exists(p)) continue;
        const KeyFile k = read_key_file(p);
        ESPER_CHECK_INPUT(k.role == bus::role_name(r), p.string(), ": role is '", k.role,
                          "', expected ", bus::role_name(r));
        s.own = k.pair;
        return s;
    }
    // Otherwise the one secret key of a wanted role, whatever its name (e.g. alice.secret).
    std::vector<KeyFile> found;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() != ".secret" || e.path().stem() == kBrokerKeyName) continue;
        KeyFile k = read_key_file(e.path());
        for (bus::Role r : roles)
            if (k.role == bus::role_name(r)) found.push_back(k);
    }
    ESPER_CHECK_INPUT(!found.empty(), "--keys ", dir.string(), ": no secret key with role ", wanted,
                      " (make one: esper keygen --out ", dir.string(), " --role ",
                      bus::role_name(*roles.begin()), ")");
    ESPER_CHECK_INPUT(found.size() == 1, "--keys ", dir.string(), ": ", found.size(),
                      " secret keys with role ", wanted, "; keep one");
    s.own = found[0].pair;
    return s;
}

Allowlist::Allowlist(fs::path dir) : dir_(std::move(dir)) {
    ESPER_CHECK_INPUT(fs::is_directory(dir_), "allowlist ", dir_.string(), ": not a directory");
    refresh();
}

void Allowlist::refresh() {
    std::error_code ec;
    const auto mtime = fs::last_write_time(dir_, ec);
    if (ec || (loaded_ && mtime == seen_)) return;
    std::unordered_map<std::string, bus::AllowedKey> keys;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
        if (e.path().extension() != ".pub") continue;
        try {
            const KeyFile k = read_key_file(e.path());
            if (auto role = bus::parse_role(k.role))
                keys[k.pair.public_key] = bus::AllowedKey{*role, k.name};
        } catch (const Error& err) {
            std::fprintf(stderr, "esper: allowlist: skipping %s\n", err.what());
        }
    }
    keys_ = std::move(keys);
    seen_ = mtime;
    loaded_ = true;
}

std::optional<bus::AllowedKey> Allowlist::lookup(std::string_view public_key) {
    refresh();
    auto it = keys_.find(std::string(public_key));
    if (it == keys_.end()) return std::nullopt;
    return it->second;
}

size_t Allowlist::size() {
    refresh();
    return keys_.size();
}

bus::ServerSecurity server_security(const fs::path& dir, const fs::path& allow_dir) {
    const fs::path p = dir / (std::string(kBrokerKeyName) + ".secret");
    const KeyFile k = read_key_file(p);
    ESPER_CHECK_INPUT(k.role == kBrokerKeyName, p.string(), ": role is '", k.role,
                      "', expected broker");
    auto allow = std::make_shared<Allowlist>(allow_dir);
    bus::ServerSecurity s;
    s.own = k.pair;
    s.lookup = [allow](std::string_view key) { return allow->lookup(key); };
    return s;
}

}  // namespace esper::agents
