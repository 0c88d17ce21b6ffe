// `esper kasmina`: the Kasmina executor. `--standalone` trains from a YAML config on this
// machine with no bus (lifecycle gates evaluated in-process, germinations from --germinate);
// without it the executor joins a run on the bus (agents/kasmina_bus.h): commands come from Tamiyo
// and operators, gates wait for the controller (lifecycle.auto_gates is turned off unless
// --auto-gates). Writes DIR/{config.yaml, metrics.jsonl, events.jsonl, checkpoints/}. SIGINT and
// SIGTERM stop at the next step boundary with a final checkpoint.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/bus_kv_store.h"
#include "agents/kasmina_bus.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/dist/collectives.h"
#include "kasmina/io/config.h"
#include "kasmina/train/cuda_backend.h"
#include "kasmina/dist/rank_env.h"
#include "kasmina/train/trainer.h"
#ifdef ESPER_HAVE_GLOO
#include "kasmina/dist/collectives_gloo.h"
#endif
#ifdef ESPER_HAVE_NCCL
#include "kasmina/dist/collectives_nccl.h"
#endif

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
        throw cli::UsageError("--germinate '" + text + "': LAYER, SEED and STEP must be integers >= 0");
    }
    const std::string kind = text.substr(c2 + 1, at - c2 - 1);
    const auto k = parse_blueprint_kind(kind);
    if (!k)
        throw cli::UsageError("--germinate '" + text + "': unknown blueprint kind '" + kind +
                              "' (residual_mlp, lowrank, scale_shift)");
    g.command.kind = *k;
    return g;
}

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }

// Rank/world from flags, torchrun or Slurm variables (kasmina/dist/rank_env.h).
RankInfo resolve_rank(const cli::Option& rank, const cli::Option& world) {
    EnvMap env;
    for (std::string_view name : rank_env_names())
        if (const char* v = std::getenv(std::string(name).c_str())) env.emplace(std::string(name), v);
    RankOverrides o;
    if (rank.given()) o.rank = static_cast<int>(rank.as_int());
    if (world.given()) o.world = static_cast<int>(world.as_int());
    // --rank/--world with LOCAL_RANK in the environment (as `esper run --ranks N` starts them):
    // LOCAL_RANK still picks the GPU.
    if (auto it = env.find("LOCAL_RANK"); rank.given() && it != env.end()) {
        const std::string& v = it->second;
        if (v.empty() || v.size() > 4 || v.find_first_not_of("0123456789") != std::string::npos)
            ESPER_THROW(kInvalidInput, "LOCAL_RANK=", v, ": not a rank number");
        o.local_rank = std::stoi(v);
    }
    return resolve_rank_info(env, o);
}

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? std::string(v) : fallback;
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
    cli::Parser p("esper kasmina", "Run the Kasmina executor (training with seed layers).");
    auto& standalone = p.flag("standalone", "train without a bus or controller (gates run in-process)");
    auto& config_path = p.option("config", "FILE", "run configuration (YAML)");
    auto& run_dir = p.option("run-dir", "DIR", "run directory (default runs/kasmina-<time>)");
    auto& epochs = p.option("epochs", "N", "override run.epochs");
    auto& max_steps = p.option("max-steps", "N", "override run.max_steps");
    auto& ckpt_every = p.option("checkpoint-every-steps", "N", "override run.checkpoint_every_steps");
    auto& resume = p.option("resume", "CHECKPOINT_DIR", "continue bit-identically from a checkpoint");
    auto& seed = p.option("seed", "N", "override run.seed");
    auto& germinate = p.option("germinate", "LAYER:SEED:KIND@STEP",
                               "germinate a seed before optimizer step STEP (standalone)", "", true);
    auto& check = p.flag("check-config", "validate the config (and overrides), print it, and exit");
    auto& bus_rpc = p.option("bus", "tcp://HOST:RPC", "bus mode: broker request/reply endpoint",
                             "tcp://127.0.0.1:5557");
    auto& bus_pub = p.option("bus-pub", "tcp://HOST:P", "bus mode: broker publisher endpoint",
                             "tcp://127.0.0.1:5555");
    p.option("bus-sub", "tcp://HOST:S", "bus mode: broker subscriber endpoint (unused by the executor)");
    auto& run_id = p.option("run-id", "ID", "bus mode: run id used in topics (default: run dir name)");
    auto& rank = p.option("rank", "N", "this executor's rank (agent name kasmina/N; env RANK)", "0");
    auto& world = p.option("world", "N", "ranks in the data-parallel job (env WORLD_SIZE)", "1");
    auto& rendezvous = p.option("rendezvous-dir", "DIR",
                                "world > 1: rendezvous through files in DIR instead of the broker",
                                "broker kv; standalone: RUN_DIR/rendezvous");
    auto& auto_gates = p.flag("auto-gates", "bus mode: keep evaluating gates in-process");
    p.epilog(
        "examples:\n"
        "  esper kasmina --standalone --config examples/fashion_mnist.yaml --epochs 2\n"
        "  esper kasmina --standalone --config examples/teacher.yaml --germinate 0:3:residual_mlp@100\n"
        "  esper kasmina --standalone --config C.yaml --max-steps 300 --resume runs/x/checkpoints/150");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!config_path.given()) return p.usage_error("--config FILE is required");
    if (!standalone.on() && !germinate.values.empty())
        return p.usage_error("--germinate needs --standalone (on the bus use `esper ctl germinate`)");
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);
    if (epochs.given() && max_steps.given())
        return p.usage_error("--epochs and --max-steps are mutually exclusive");
    std::vector<Germination> germs;
    for (const std::string& g : germinate.values) germs.push_back(parse_germination(g));

    Config config = load_config(config_path.str());
    if (epochs.given()) {
        if (epochs.as_int() < 1) throw cli::UsageError("--epochs must be >= 1");
        config.run.epochs = epochs.as_int();
        config.run.max_steps = 0;
    }
    if (max_steps.given()) {
        if (max_steps.as_int() < 1) throw cli::UsageError("--max-steps must be >= 1");
        config.run.max_steps = max_steps.as_int();
    }
    if (ckpt_every.given()) {
        if (ckpt_every.as_int() < 0) throw cli::UsageError("--checkpoint-every-steps must be >= 0");
        config.run.checkpoint_every_steps = ckpt_every.as_int();
    }
    if (seed.given()) {
        if (seed.as_int() < 0) throw cli::UsageError("--seed must be >= 0");
        config.run.seed = uint64_t(seed.as_int());
    }
    // run.device (auto | cpu | cuda) is resolved by the Trainer: auto takes CUDA when this build
    // has it and a device is visible; cuda without one is an error.
    if (!standalone.on() && !auto_gates.on()) config.lifecycle.auto_gates = false;
    if (check.on()) {
        std::printf("%s", config_to_yaml(config).c_str());
        return 0;
    }
    const RankInfo ri = resolve_rank(rank, world);
    const std::string dir = run_dir.given() ? run_dir.str() : default_run_dir();
    fs::create_directories(dir);
    const std::string effective = config_to_yaml(config);
    if (ri.is_leader()) {
        std::ofstream out(fs::path(dir) / "config.yaml");
        out << effective;
        if (!out) ESPER_THROW(kFailed, dir, "/config.yaml: cannot write");
    }
    std::printf("esper kasmina: effective config (also in %s/config.yaml)\n%s\n", dir.c_str(),
                effective.c_str());

    TrainerOptions opt;
    opt.run_dir = dir;
    // world > 1: Gloo over TCP. Peers meet through the broker's kv service in bus mode, else
    // (or with --rendezvous-dir) through a FileKvStore in a directory every rank sees.
    std::unique_ptr<KvStore> kv_store;
    std::unique_ptr<Collectives> comm;
#ifdef ESPER_HAVE_NCCL
    std::unique_ptr<NcclComm> nccl;  // declared after comm: destroyed first
#endif
    opt.rank = ri.rank;
    opt.world = ri.world;
    if (ri.world > 1) {
#ifdef ESPER_HAVE_GLOO
        const std::string rid = run_id.given() ? run_id.str() : fs::path(dir).filename().string();
        std::string rdv;
        if (!standalone.on() && !rendezvous.given()) {
            rdv = "broker " + bus_rpc.str();
            kv_store = std::make_unique<BusKvStore>(bus_rpc.str(),
                                                    "kasmina/" + std::to_string(ri.rank), rid);
        } else {
            rdv = rendezvous.given() ? rendezvous.str() : (fs::path(dir) / "rendezvous").string();
            kv_store = std::make_unique<FileKvStore>(rdv);
        }
        GlooConfig gc;
        gc.rank = ri.rank;
        gc.world = ri.world;
        gc.hostname = env_or("ESPER_NODE_ADDR", "127.0.0.1");
        gc.key_prefix = rid + "/" + env_or("ESPER_ATTEMPT", "0") + "/gloo";
        gc.timeout = std::chrono::milliseconds(120000);
        comm = std::make_unique<GlooCollectives>(gc, *kv_store);
        opt.collectives = comm.get();
        // CUDA ranks: LOCAL_RANK picks the device; device gradients are averaged over NCCL (the
        // host-side sync above stays on Gloo). Without a device for this rank: CPU (auto) or an
        // error (cuda).
        const char* grad_backend = "gloo";
        if (trainer_uses_cuda(config)) {
            const int devices = cuda_device_count();
#ifdef ESPER_HAVE_NCCL
            const bool gpu_rank = ri.local_rank < devices;
#else
            const bool gpu_rank = false;
#endif
            if (gpu_rank) {
#ifdef ESPER_HAVE_NCCL
                NcclConfig nc;
                nc.rank = ri.rank;
                nc.world = ri.world;
                nc.device = ri.local_rank;  // NcclComm's constructor calls cudaSetDevice
                nc.key_prefix = rid + "/" + env_or("ESPER_ATTEMPT", "0") + "/nccl";
                nc.timeout = std::chrono::milliseconds(120000);
                nccl = std::make_unique<NcclComm>(nc, *kv_store);
                opt.nccl = nccl.get();
                grad_backend = "nccl";
#endif
            } else if (config.run.device == "cuda") {
                ESPER_THROW(kInvalidInput, "run.device: cuda: rank ", ri.rank, " has LOCAL_RANK=",
                            ri.local_rank, " but ", devices, " CUDA device(s) are visible",
#ifdef ESPER_HAVE_NCCL
                            "");
#else
                            " and this build has no NCCL");
#endif
            } else {
                config.run.device = "cpu";
            }
        }
        ESPER_LOG_AT(logger("kasmina"), LogLevel::kInfo, "rank=", ri.rank, " world=", ri.world,
                     " source=", ri.source, " backend=gloo grads=", grad_backend,
                     " device=", config.run.device, " local_rank=", ri.local_rank,
                     " rendezvous=", rdv);
#else
        ESPER_THROW(kInvalidInput, "world ", ri.world, ": this build has no Gloo (libgloo-dev)");
#endif
    }
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    Stopwatch clock;
    Trainer trainer(config, opt);
    std::printf("data: %s; %lld steps (%lld per epoch), %lld host parameters\n",
                trainer.data().description.c_str(), (long long)trainer.total_steps(),
                (long long)trainer.steps_per_epoch(), (long long)trainer.model().param_count());
    if (resume.given()) {
        trainer.load_checkpoint(resume.str());
        std::printf("resumed from %s at step %lld\n", resume.str().c_str(),
                    (long long)trainer.steps_done());
    }
    std::fflush(stdout);
    if (!standalone.on()) {
        KasminaBusOptions bo;
        bo.rpc_endpoint = bus_rpc.str();
        bo.pub_endpoint = bus_pub.str();
        bo.run_id = run_id.given() ? run_id.str() : fs::path(dir).filename().string();
        bo.rank = ri.rank;
        bo.world = ri.world;
        bo.run_dir = dir;
        return run_kasmina_bus(trainer, bo, g_stop);
    }
    while (!trainer.done()) {
        if (g_stop.load()) trainer.request_stop();
        apply_germinations(trainer, germs);
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
    std::printf("done: %lld steps in %.1fs, test_loss %.4f, test_accuracy %.4f, events %lld, run dir %s\n",
                (long long)trainer.steps_done(), clock.elapsed_s(), final_eval.loss,
                final_eval.accuracy, (long long)trainer.seeds().events_written(), dir.c_str());
    return 0;
}

}  // namespace esper::agents
