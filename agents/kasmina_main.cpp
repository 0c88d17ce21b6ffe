// `esper kasmina`: the Kasmina executor. `--standalone` trains from a YAML config on this
// machine with no bus (lifecycle gates evaluated in-process, germinations from --germinate);
// without it the executor joins a run on the bus (agents/kasmina_bus.h): commands come from Tamiyo
// and operators, gates wait for the controller (lifecycle.auto_gates is turned off unless
// --auto-gates). Writes DIR/{config.yaml, metrics.jsonl, events.jsonl, checkpoints/}. SIGINT and
// SIGTERM stop at the next step boundary with a final checkpoint. main is wiring: flags → config
// → rank → collectives (kasmina/dist/comms.h) → trainer → the standalone or the bus loop.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agents/bus_kv_store.h"
#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/default_config.h"
#include "agents/kasmina_bus.h"
#include "agents/keys.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "kasmina/dist/comms.h"
#include "kasmina/dist/rank_env.h"
#include "kasmina/io/config.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/train/step_backend.h"
#include "kasmina/train/trainer.h"

namespace esper::agents {

namespace {

namespace fs = std::filesystem;
using namespace esper::kasmina;

struct Germination {
    int64_t step = 0;
    GerminateCommand command;
};

// LAYER:SEED:KIND@STEP
Germination parse_germination(const std::string& text) {
    Germination g;
    const size_t c1 = text.find(':'), c2 = text.find(':', c1 == std::string::npos ? 0 : c1 + 1),
                 at = text.find('@');
    if (c1 == std::string::npos || c2 == std::string::npos || at == std::string::npos || at < c2)
        throw cli::UsageError("--germinate '" + text + "': expected LAYER:SEED:KIND@STEP");
    try {
        size_t used = 0;
        g.command.target.layer = std::stoi(text.substr(0, c1), &used);
        if (used != c1) throw std::invalid_argument("layer");
        const std::string seed = text.substr(c1 + 1, c2 - c1 - 1);
        g.command.target.seed = std::stoi(seed, &used);
        if (used != seed.size()) throw std::invalid_argument("seed");
        const std::string step = text.substr(at + 1);
        g.step = std::stoll(step, &used);
        if (used != step.size() || g.step < 0) throw std::invalid_argument("step");
    } catch (const std::logic_error&) {
        throw cli::UsageError("--germinate '" + text +
                              "': LAYER, SEED and STEP must be integers >= 0");
    }
    const std::string kind = text.substr(c2 + 1, at - c2 - 1);
    const auto k = parse_blueprint_kind(kind);
    if (!k)
        throw cli::UsageError("--germinate '" + text + "': unknown blueprint kind '" + kind +
                              "' (" + names_list(kBlueprintKindNames) + ")");
    g.command.kind = *k;
    return g;
}

// The command line, checked; nothing below parse_flags reads argv.
struct KasminaFlags {
    bool standalone = false;
    std::string config_path;  // "" = the embedded default
    std::string run_dir;      // "" = runs/kasmina-<time>
    std::optional<int64_t> epochs, max_steps, checkpoint_every_steps, seed;
    std::string resume;  // checkpoint dir, or ""
    std::vector<Germination> germinations;
    bool check_config = false;
    std::string bus_rpc, bus_pub;
    std::string run_id;  // "" = the run dir's name
    std::optional<int> rank, world;
    std::string rendezvous_dir;  // "" = the broker's kv (bus) or RUN_DIR/rendezvous
    bool auto_gates = false;
    std::string keys_dir;  // bus mode: CURVE keys (agents/keys.h); "" = none
};

// Returns -1 to continue, else the exit code (after --help or a usage error).
int parse_flags(int argc, char** argv, KasminaFlags& f) {
    cli::Parser p("esper kasmina", "Run the Kasmina executor (training with seed layers).");
    auto& standalone =
        p.flag("standalone", "train without a bus or controller (gates run in-process)");
    auto& config_path = p.option("config", "FILE", "run configuration (YAML)",
                                 "embedded fashion_mnist.yaml, as esper run");
    auto& run_dir = p.option("run-dir", "DIR", "run directory (default runs/kasmina-<time>)");
    auto& epochs = p.option("epochs", "N", "override run.epochs");
    auto& max_steps = p.option("max-steps", "N", "override run.max_steps");
    auto& ckpt_every =
        p.option("checkpoint-every-steps", "N", "override run.checkpoint_every_steps");
    auto& resume =
        p.option("resume", "CHECKPOINT_DIR", "continue bit-identically from a checkpoint");
    auto& seed = p.option("seed", "N", "override run.seed");
    auto& germinate =
        p.option("germinate", "LAYER:SEED:KIND@STEP",
                 "germinate a seed before optimizer step STEP (standalone)", "", true);
    auto& check = p.flag("check-config", "validate the config (and overrides), print it, and exit");
    auto& bus_rpc = p.option("bus", "tcp://HOST:RPC", "bus mode: broker request/reply endpoint",
                             "tcp://127.0.0.1:5557");
    auto& bus_pub = p.option("bus-pub", "tcp://HOST:P", "bus mode: broker publisher endpoint",
                             "tcp://127.0.0.1:5555");
    p.option("bus-sub", "tcp://HOST:S",
             "bus mode: broker subscriber endpoint (unused by the executor)");
    auto& run_id =
        p.option("run-id", "ID", "bus mode: run id used in topics (default: run dir name)");
    auto& rank =
        p.option("rank", "N", "this executor's rank (agent name kasmina/N; env RANK)", "0");
    auto& world = p.option("world", "N", "ranks in the data-parallel job (env WORLD_SIZE)", "1");
    auto& rendezvous = p.option("rendezvous-dir", "DIR",
                                "world > 1: rendezvous through files in DIR instead of the broker",
                                "broker kv; standalone: RUN_DIR/rendezvous");
    auto& auto_gates = p.flag("auto-gates", "bus mode: keep evaluating gates in-process");
    auto& keys = p.option("keys", "DIR",
                          "bus mode: CURVE keys (DIR/broker.pub and an agent secret key; "
                          "docs/bus.md)");
    p.epilog(
        "examples:\n"
        "  esper kasmina --standalone --config examples/fashion_mnist.yaml --epochs 2\n"
        "  esper kasmina --standalone --config examples/teacher.yaml --germinate "
        "0:3:residual_mlp@100\n"
        "  esper kasmina --standalone --config C.yaml --max-steps 300 --resume "
        "runs/x/checkpoints/150");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!standalone.on() && !germinate.values.empty())
        return p.usage_error(
            "--germinate needs --standalone (on the bus use `esper ctl germinate`)");
    if (epochs.given() && max_steps.given())
        return p.usage_error("--epochs and --max-steps are mutually exclusive");
    f.standalone = standalone.on();
    if (config_path.given()) f.config_path = config_path.str();
    if (run_dir.given()) f.run_dir = run_dir.str();
    if (epochs.given()) f.epochs = epochs.as_int();
    if (max_steps.given()) f.max_steps = max_steps.as_int();
    if (ckpt_every.given()) f.checkpoint_every_steps = ckpt_every.as_int();
    if (seed.given()) f.seed = seed.as_int();
    if (resume.given()) f.resume = resume.str();
    for (const std::string& g : germinate.values) f.germinations.push_back(parse_germination(g));
    f.check_config = check.on();
    f.bus_rpc = bus_rpc.str();
    f.bus_pub = bus_pub.str();
    if (run_id.given()) f.run_id = run_id.str();
    if (rank.given()) f.rank = static_cast<int>(rank.as_int());
    if (world.given()) f.world = static_cast<int>(world.as_int());
    if (rendezvous.given()) f.rendezvous_dir = rendezvous.str();
    f.auto_gates = auto_gates.on();
    if (keys.given()) f.keys_dir = keys.str();
    return -1;
}

// The config file with the command line's overrides.
Config effective_config(const KasminaFlags& f) {
    // Without --config every rank runs the embedded default, as `esper run` does, so a launcher
    // needs no file on the nodes.
    Config config = f.config_path.empty()
                        ? parse_config(kDefaultConfigYaml, "embedded fashion_mnist.yaml")
                        : load_config(f.config_path);
    if (f.epochs) {
        if (*f.epochs < 1) throw cli::UsageError("--epochs must be >= 1");
        config.run.epochs = *f.epochs;
        config.run.max_steps = 0;
    }
    if (f.max_steps) {
        if (*f.max_steps < 1) throw cli::UsageError("--max-steps must be >= 1");
        config.run.max_steps = *f.max_steps;
    }
    if (f.checkpoint_every_steps) {
        if (*f.checkpoint_every_steps < 0)
            throw cli::UsageError("--checkpoint-every-steps must be >= 0");
        config.run.checkpoint_every_steps = *f.checkpoint_every_steps;
    }
    if (f.seed) {
        if (*f.seed < 0) throw cli::UsageError("--seed must be >= 0");
        config.run.seed = uint64_t(*f.seed);
    }
    // run.device (auto | cpu | cuda) is resolved by the Trainer: auto takes CUDA when this build
    // has it and a device is visible; cuda without one is an error.
    if (!f.standalone && !f.auto_gates) config.lifecycle.auto_gates = false;
    return config;
}

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

// Rank/world from flags, torchrun or Slurm variables (kasmina/dist/rank_env.h).
RankInfo resolve_rank(const KasminaFlags& f) {
    EnvMap env;
    for (std::string_view name : rank_env_names())
        if (const char* v = std::getenv(std::string(name).c_str()))
            env.emplace(std::string(name), v);
    RankOverrides o;
    o.rank = f.rank;
    o.world = f.world;
    // --rank/--world with LOCAL_RANK in the environment (as `esper run --ranks N` starts them):
    // LOCAL_RANK still picks the GPU.
    if (auto it = env.find("LOCAL_RANK"); f.rank && it != env.end()) {
        const std::string& v = it->second;
        if (v.empty() || v.size() > 4 || v.find_first_not_of("0123456789") != std::string::npos)
            ESPER_THROW(kInvalidInput, "LOCAL_RANK=", v, ": not a rank number");
        o.local_rank = std::stoi(v);
    }
    return resolve_rank_info(env, o);
}

// world > 1: peers meet through the broker's kv service in bus mode, else (or with
// --rendezvous-dir) through a FileKvStore in a directory every rank sees. `where` says which.
std::unique_ptr<KvStore> make_rendezvous(const KasminaFlags& f, const RankInfo& ri,
                                         const std::string& dir, const std::string& run_id,
                                         const bus::ClientSecurity& security, std::string& where) {
    if (ri.world <= 1) return nullptr;
    if (!f.standalone && f.rendezvous_dir.empty()) {
        where = "broker " + f.bus_rpc;
        return std::make_unique<BusKvStore>(f.bus_rpc, "kasmina/" + std::to_string(ri.rank), run_id,
                                            security);
    }
    where = !f.rendezvous_dir.empty() ? f.rendezvous_dir : (fs::path(dir) / "rendezvous").string();
    return std::make_unique<FileKvStore>(where);
}

// Gloo for every rank of a data-parallel run; NCCL for the device gradients of a CUDA rank
// (LOCAL_RANK picks the device). A rank without a device trains on the CPU under run.device
// auto (config.run.device becomes cpu) and is an error under cuda.
Comms make_rank_comms(Config& config, const RankInfo& ri, const std::string& run_id, KvStore* store,
                      const std::string& where) {
    CommsConfig c;
    c.rank = ri.rank;
    c.world = ri.world;
    c.local_rank = ri.local_rank;
    c.run_id = run_id;
    c.attempt = env_or("ESPER_ATTEMPT", "0");
    c.node_address = env_or("ESPER_NODE_ADDR", "127.0.0.1");
    c.timeout = std::chrono::milliseconds(120000);
    if (ri.world > 1) {
        c.cuda = trainer_uses_cuda(config);
        c.cuda_required = config.run.device == "cuda";
        c.cuda_devices = c.cuda ? cuda_device_count() : 0;
    }
    Comms comms = make_comms(c, store);
    if (ri.world <= 1) return comms;
    if (c.cuda && !comms.cuda) config.run.device = "cpu";
    ESPER_LOG_AT(logger("kasmina"), LogLevel::kInfo, "rank=", ri.rank, " world=", ri.world,
                 " source=", ri.source, " backend=gloo grads=", comms.grads(),
                 " device=", config.run.device, " local_rank=", ri.local_rank,
                 " rendezvous=", where);
    return comms;
}

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }

void install_stop_signals() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

std::string default_run_dir() {
    return "runs/kasmina-" + std::to_string(wall_time_ns() / 1000000000);
}

// --germinate: operator commands applied at the boundary before their step.
void apply_germinations(Trainer& t, const std::vector<Germination>& germs) {
    for (const Germination& g : germs) {
        if (g.step != t.steps_done()) continue;
        Command c;
        c.origin = TransitionOrigin::kOperator;
        c.reason = "--germinate";
        c.body = g.command;
        const Outcome o = t.apply(c);
        if (!o.applied())
            ESPER_LOG_AT(logger("kasmina"), LogLevel::kWarn,
                         "germinate layer=", g.command.target.layer,
                         " seed=", g.command.target.seed, " rejected: ", o.reason);
    }
}

// The standalone loop: germinations and the stop signal at each boundary; a final checkpoint
// when stopped, a final evaluation always.
int run_standalone(Trainer& trainer, const KasminaFlags& f, const RankInfo& ri,
                   const std::string& dir, const Stopwatch& clock) {
    while (!trainer.done()) {
        if (g_stop.load()) trainer.request_stop();
        apply_germinations(trainer, f.germinations);
        if (!trainer.boundary()) break;
        trainer.step();
        const StepReport due = trainer.after_step();
        if (due.epoch) print_epoch_summary(*due.epoch);
    }
    if (trainer.stop_requested()) {
        fs::path ck = fs::path(dir) / "checkpoints" / std::to_string(trainer.steps_done());
        if (ri.is_leader() && !fs::exists(ck)) trainer.save_checkpoint(ck);
        std::printf("stopped by signal at step %lld; final checkpoint %s\n",
                    (long long)trainer.steps_done(), ck.c_str());
    }
    const EvalResult final_eval = trainer.evaluate();
    if (ri.world > 1)
        std::printf("rank %d final digest=%llu\n", ri.rank,
                    static_cast<unsigned long long>(trainer.seeds().digest()));
    std::printf(
        "done: %lld steps in %.1fs, test_loss %.4f, test_accuracy %.4f, events %lld, run dir %s\n",
        (long long)trainer.steps_done(), clock.elapsed_s(), final_eval.loss, final_eval.accuracy,
        (long long)trainer.seeds().events_written(), dir.c_str());
    return 0;
}

}  // namespace

void print_epoch_summary(const EpochSummary& s) {
    std::printf(
        "epoch %lld  step %lld  train_loss %.4f  test_loss %.4f  test_acc %.4f  "
        "live_seeds %lld  params %lld  %.1fs\n",
        (long long)s.epoch, (long long)s.step, s.train_loss, s.test.loss, s.test.accuracy,
        (long long)s.active_seeds, (long long)s.param_count, s.seconds);
    std::fflush(stdout);
}

int kasmina_main(int argc, char** argv) {
    KasminaFlags f;
    if (int rc = parse_flags(argc, argv, f); rc >= 0) return rc;
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);
    Config config = effective_config(f);
    if (f.check_config) {
        std::printf("%s", config_to_yaml(config).c_str());
        return 0;
    }
    const RankInfo ri = resolve_rank(f);
    // Read (and its mode checked) before training starts, so a bad key fails fast.
    const bus::ClientSecurity security = f.keys_dir.empty() || f.standalone
                                             ? bus::ClientSecurity{}
                                             : client_security(f.keys_dir, {bus::Role::kAgent});
    const std::string dir = !f.run_dir.empty() ? f.run_dir : default_run_dir();
    const std::string run_id = !f.run_id.empty() ? f.run_id : fs::path(dir).filename().string();
    fs::create_directories(dir);
    const std::string effective = config_to_yaml(config);
    if (ri.is_leader()) {
        std::ofstream out(fs::path(dir) / "config.yaml");
        out << effective;
        if (!out) ESPER_THROW(kFailed, dir, "/config.yaml: cannot write");
    }
    std::printf("esper kasmina: effective config (also in %s/config.yaml)\n%s\n", dir.c_str(),
                effective.c_str());

    std::string where;
    std::unique_ptr<KvStore> store = make_rendezvous(f, ri, dir, run_id, security, where);
    Comms comms = make_rank_comms(config, ri, run_id, store.get(), where);
    install_stop_signals();

    Stopwatch clock;
    TrainerOptions opt;
    opt.run_dir = dir;
    opt.rank = ri.rank;
    opt.world = ri.world;
    opt.collectives = comms.collectives.get();
    opt.nccl = comms.nccl.get();
    Trainer trainer(config, opt);
    std::printf("data: %s; %lld steps (%lld per epoch), %lld host parameters\n",
                trainer.data().description().c_str(), (long long)trainer.total_steps(),
                (long long)trainer.steps_per_epoch(), (long long)trainer.model().param_count());
    if (!f.resume.empty()) {
        trainer.load_checkpoint(f.resume);
        std::printf("resumed from %s at step %lld\n", f.resume.c_str(),
                    (long long)trainer.steps_done());
    }
    std::fflush(stdout);
    if (f.standalone) return run_standalone(trainer, f, ri, dir, clock);
    KasminaBusOptions bo;
    bo.rpc_endpoint = f.bus_rpc;
    bo.pub_endpoint = f.bus_pub;
    bo.run_id = run_id;
    bo.rank = ri.rank;
    bo.world = ri.world;
    bo.run_dir = dir;
    bo.config_path = f.config_path;
    bo.security = security;
    return run_kasmina_bus(trainer, bo, g_stop);
}

}  // namespace esper::agents
