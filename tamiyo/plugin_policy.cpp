// The plugin policy (tamiyo/plugin_policy.h): dlopen, symbol and version checks, and the
// translation between the view and the C records of esper_policy_v1.
#include "tamiyo/plugin_policy.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "core/error.h"
#include "core/log.h"

namespace esper::tamiyo {
namespace {

float f(const std::optional<double>& v) {
    return v ? static_cast<float>(*v) : std::numeric_limits<float>::quiet_NaN();
}

std::string bounded(const char* s, size_t cap) { return std::string(s, strnlen(s, cap)); }

// This process's ELF class and machine: a plugin must match them to be loadable at all.
constexpr int kHostClass = sizeof(void*) == 8 ? ELFCLASS64 : ELFCLASS32;
#if defined(__x86_64__)
constexpr int kHostMachine = EM_X86_64;
#elif defined(__aarch64__)
constexpr int kHostMachine = EM_AARCH64;
#else
constexpr int kHostMachine = -1;  // unknown: not checked
#endif

struct ElfDeleter {
    void operator()(Elf* e) const { elf_end(e); }
};

}  // namespace

void check_plugin_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        ESPER_THROW(kInvalidInput, path, ": cannot load policy plugin: ", std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        ESPER_THROW(kInvalidInput, path, ": cannot load policy plugin: not a regular file");
    if (elf_version(EV_CURRENT) == EV_NONE) ESPER_THROW(kFailed, "libelf: ", elf_errmsg(-1));
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        ESPER_THROW(kInvalidInput, path, ": cannot load policy plugin: ", std::strerror(errno));
    std::set<std::string> defined;
    std::string problem;
    {
        std::unique_ptr<Elf, ElfDeleter> elf(elf_begin(fd, ELF_C_READ, nullptr));
        GElf_Ehdr eh;
        if (!elf || elf_kind(elf.get()) != ELF_K_ELF || gelf_getehdr(elf.get(), &eh) == nullptr) {
            problem = "not an ELF file";
        } else if (eh.e_ident[EI_CLASS] != kHostClass ||
                   (kHostMachine >= 0 && eh.e_machine != kHostMachine)) {
            problem = "built for another architecture";
        } else if (eh.e_type != ET_DYN) {
            problem = "not a shared library";
        } else {
            // Exported = defined (a section index), global or weak, and a function.
            Elf_Scn* scn = nullptr;
            while ((scn = elf_nextscn(elf.get(), scn)) != nullptr) {
                GElf_Shdr sh;
                if (gelf_getshdr(scn, &sh) == nullptr || sh.sh_type != SHT_DYNSYM) continue;
                Elf_Data* data = elf_getdata(scn, nullptr);
                const size_t n = sh.sh_entsize ? sh.sh_size / sh.sh_entsize : 0;
                for (size_t i = 0; data != nullptr && i < n; ++i) {
                    GElf_Sym sym;
                    if (gelf_getsym(data, static_cast<int>(i), &sym) == nullptr) continue;
                    const int bind = GELF_ST_BIND(sym.st_info);
                    if (sym.st_shndx == SHN_UNDEF || GELF_ST_TYPE(sym.st_info) != STT_FUNC ||
                        (bind != STB_GLOBAL && bind != STB_WEAK))
                        continue;
                    if (const char* name = elf_strptr(elf.get(), sh.sh_link, sym.st_name))
                        defined.insert(name);
                }
            }
        }
    }
    ::close(fd);
    if (!problem.empty())
        ESPER_THROW(kInvalidInput, path, ": cannot load policy plugin: ", problem);
    for (const char* name : kPluginSymbols)
        if (defined.count(name) == 0)
            ESPER_THROW(kInvalidInput, path, ": not an esper_policy_v1 plugin: missing symbol '",
                        name, "'");
}

std::unique_ptr<PluginPolicy> PluginPolicy::load(const std::string& path,
                                                 const std::string& config) {
    check_plugin_file(path);  // before dlopen runs any of its code
    std::unique_ptr<PluginPolicy> p(new PluginPolicy());
    p->path_ = path;
    dlerror();
    p->handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (p->handle_ == nullptr) {
        const char* why = dlerror();
        ESPER_THROW(kInvalidInput, path,
                    ": cannot load policy plugin: ", why ? why : "unknown error");
    }
    auto sym = [&](const char* name) {
        void* s = dlsym(p->handle_, name);
        if (s == nullptr)
            ESPER_THROW(kInvalidInput, path, ": not an esper_policy_v1 plugin: missing symbol '",
                        name, "'");
        return s;
    };
    auto version = reinterpret_cast<esper_policy_abi_version_fn>(sym("esper_policy_abi_version"));
    const uint32_t v = version();
    if (v != ESPER_POLICY_ABI_VERSION)
        ESPER_THROW(kInvalidInput, path, ": policy plugin ABI version ", v,
                    " does not match this build's esper_policy_v", ESPER_POLICY_ABI_VERSION);
    auto init = reinterpret_cast<esper_policy_init_fn>(sym("esper_policy_init"));
    p->decide_ = reinterpret_cast<esper_policy_decide_fn>(sym("esper_policy_decide"));
    p->destroy_ = reinterpret_cast<esper_policy_destroy_fn>(sym("esper_policy_destroy"));

    char name[64] = {};
    p->state_ = init(config.empty() ? nullptr : config.c_str(), name, sizeof(name));
    if (p->state_ == nullptr) ESPER_THROW(kInvalidInput, path, ": policy plugin init failed");
    p->name_ = bounded(name, sizeof(name));
    if (p->name_.empty()) p->name_ = path;
    return p;
}

PluginPolicy::~PluginPolicy() {
    if (state_ != nullptr && destroy_ != nullptr) destroy_(state_);
    if (handle_ != nullptr && dlclose(handle_) != 0)
        ESPER_LOG_WARN(logger("tamiyo.policy"), "dlclose failed for ", path_, ": ", dlerror());
}

std::vector<Decision> PluginPolicy::decide(const View& view, uint64_t step) {
    seeds_.clear();
    for (const auto& [layer_id, lv] : view.layers())
        for (const SeedView& s : lv.seeds) {
            if (!s.known) continue;
            esper_policy_seed_v1 r{};
            r.layer = s.layer;
            r.seed = s.seed;
            r.stage = static_cast<uint8_t>(s.stage);
            r.blueprint_kind =
                static_cast<uint8_t>(s.blueprint.value_or(BlueprintKind::kResidualMlp));
            const uint64_t in_stage = s.steps_in_stage(step);
            r.steps_in_stage = static_cast<uint32_t>(
                std::min<uint64_t>(in_stage, std::numeric_limits<uint32_t>::max()));
            r.alpha = s.alpha;
            r.act_mean = f(s.latest.act_mean);
            r.act_var = f(s.latest.act_var);
            r.dead_fraction = f(s.latest.dead_fraction);
            r.grad_norm = f(s.latest.grad_norm);
            r.blueprint_grad_norm = f(s.latest.blueprint_grad_norm);
            r.gradient_health = f(s.latest.gradient_health);
            r.contribution = f(s.latest.contribution);
            r.health = f(s.latest.health);
            seeds_.push_back(r);
        }
    const RunView& rv = view.run();
    esper_policy_run_v1 run{};
    run.step = step;
    run.epoch = rv.epoch;
    run.plateau = rv.plateau ? 1u : 0u;
    run.steps_since_improvement = rv.steps_since_improvement();
    run.loss = f(rv.latest.loss);
    run.accuracy = f(rv.latest.accuracy);
    run.test_loss = f(rv.latest.test_loss);
    run.test_accuracy = f(rv.latest.test_accuracy);
    run.host_params = rv.latest.host_params;
    run.blueprint_params = view.live_blueprint_params();

    const esper_policy_input_v1 input{&run, seeds_.data(), static_cast<uint32_t>(seeds_.size())};
    out_.assign(kMaxDecisions, esper_policy_decision_v1{});
    const int32_t n = decide_(state_, &input, out_.data(), kMaxDecisions);
    if (n < 0) ESPER_THROW(kFailed, "policy plugin ", name_, " returned error ", n);
    if (static_cast<uint32_t>(n) > kMaxDecisions)
        ESPER_THROW(kFailed, "policy plugin ", name_, " returned ", n, " decisions > capacity ",
                    kMaxDecisions);

    std::vector<Decision> decisions;
    decisions.reserve(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
        const esper_policy_decision_v1& o = out_[static_cast<size_t>(i)];
        if (o.kind > ESPER_POLICY_ROLLBACK)
            ESPER_THROW(kFailed, "policy plugin ", name_, ": decision ", i, " has unknown kind ",
                        o.kind);
        if (o.blueprint_kind >= static_cast<uint32_t>(kNumBlueprintKinds))
            ESPER_THROW(kFailed, "policy plugin ", name_, ": decision ", i,
                        " has unknown blueprint kind ", o.blueprint_kind);
        Decision d;
        d.kind = static_cast<DecisionKind>(o.kind);
        d.layer = o.layer;
        d.seed = o.seed;
        d.blueprint = static_cast<BlueprintKind>(o.blueprint_kind);
        d.blueprint_size = o.blueprint_size;
        const std::string strategy = bounded(o.strategy, sizeof(o.strategy));
        d.strategy = strategy.empty() ? "linear" : strategy;
        d.reason = bounded(o.reason, sizeof(o.reason));
        if (d.reason.empty()) d.reason = "plugin " + name_;
        decisions.push_back(std::move(d));
    }
    return decisions;
}

}  // namespace esper::tamiyo
