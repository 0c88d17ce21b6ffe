#include "agents/kasmina_bus.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "agents/wire_vocabulary.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "kernels/seed_layer.h"
#include "schemas/config.capnp.h"

namespace esper::agents {
namespace {

namespace fs = std::filesystem;
using namespace esper::kasmina;

Logger& log() { return logger("kasmina.agent"); }

// ---- wire → kasmina::Command (bus input: every field checked, nothing asserted) ----

// Who issued a command decides its origin. With keys it is the role the broker authenticated
// (operator key: operator, agent key: the controller), never a field the sender wrote; without
// keys nothing is authenticated and the self-declared issuedBy is all there is.
TransitionOrigin origin_of(const bus::Peer& peer, schema::Command::Reader c) {
    if (peer.authenticated())
        return peer.role == bus::Role::kOperator ? TransitionOrigin::kOperator
                                                 : TransitionOrigin::kController;
    std::string issued = c.getIssuedBy().cStr();
    return issued == "operator" || issued.rfind("operator/", 0) == 0
               ? TransitionOrigin::kOperator
               : TransitionOrigin::kController;
}

// Commands change the seed tables: an operator or agent key (observers may only ask for status).
std::optional<std::string> authorize_request(const bus::Peer& peer, schema::Envelope::Reader req) {
    auto p = req.getPayload();
    const bool command =
        p.isCommand() || (p.isControlRequest() && p.getControlRequest().isCommand());
    if (!command || peer.allowed({bus::Role::kOperator, bus::Role::kAgent})) return std::nullopt;
    return "commands need an operator or agent key; this is " +
           std::string(bus::role_name(peer.role)) + " " + peer.name;
}

// Returns the command, or the reason it cannot be one (unknown variant, bad enum value, size).
std::variant<Command, std::string> to_command(schema::Command::Reader c, const Config& config,
                                              TransitionOrigin origin) {
    Command out;
    out.origin = origin;
    out.reason = c.getReason().cStr();
    auto ref = [](auto r) {
        return SeedRef{static_cast<int32_t>(r.getLayer()), static_cast<int32_t>(r.getSeed())};
    };
    switch (c.which()) {
        case schema::Command::GERMINATE: {
            auto g = c.getGerminate();
            const auto kind = from_wire(g.getBlueprintKind());
            const auto strategy = from_wire(g.getStrategy());
            if (!kind)
                return fmt::format("unknown blueprint kind {}",
                                   static_cast<uint16_t>(g.getBlueprintKind()));
            if (!strategy)
                return fmt::format("unknown grafting strategy {}",
                                   static_cast<uint16_t>(g.getStrategy()));
            GerminateCommand gc;
            gc.target = {static_cast<int32_t>(g.getLayer()), static_cast<int32_t>(g.getSeed())};
            gc.kind = *kind;
            gc.strategy = *strategy;
            // Arenas are pre-allocated per kind with the configured size; another size would need
            // a new arena (DESIGN §4.2: no allocation in the hot path).
            int64_t configured =
                gc.kind == BlueprintKind::kResidualMlp ? config.blueprints.residual_mlp.expansion
                : gc.kind == BlueprintKind::kLowrank   ? config.blueprints.lowrank.rank
                                                       : 0;
            if (g.getSize() != 0 && static_cast<int64_t>(g.getSize()) != configured)
                return fmt::format(
                    "blueprint size {} not available: the arena of this kind is sized {} "
                    "(set blueprints.* in the run config)",
                    g.getSize(), configured);
            out.body = gc;
            break;
        }
        case schema::Command::TRANSITION: {
            auto t = c.getTransition();
            const auto to = from_wire(t.getToStage());
            if (!to) return fmt::format("unknown stage {}", static_cast<uint16_t>(t.getToStage()));
            out.body = TransitionCommand{ref(t), *to};
            break;
        }
        case schema::Command::CULL:
            out.body = CullCommand{ref(c.getCull())};
            break;
        case schema::Command::CANCEL:
            out.body = CancelCommand{ref(c.getCancel())};
            break;
        case schema::Command::ROLLBACK:
            out.body = RollbackCommand{ref(c.getRollback())};
            break;
        case schema::Command::SET_ALPHA_SCHEDULE: {
            auto a = c.getSetAlphaSchedule();
            const auto strategy = from_wire(a.getStrategy());
            if (!strategy)
                return fmt::format("unknown grafting strategy {}",
                                   static_cast<uint16_t>(a.getStrategy()));
            SetAlphaScheduleCommand sc;
            sc.target = {static_cast<int32_t>(a.getLayer()), static_cast<int32_t>(a.getSeed())};
            sc.strategy = *strategy;
            if (a.getRampSteps() > 0) sc.ramp_steps = a.getRampSteps();
            out.body = sc;
            break;
        }
        case schema::Command::BATCH: {
            BatchCommand b;
            for (auto item : c.getBatch()) {
                auto r = to_command(item, config, origin);
                if (auto* why = std::get_if<std::string>(&r)) return "batch item: " + *why;
                b.commands.push_back(std::get<Command>(std::move(r)));
            }
            out.body = std::move(b);
            break;
        }
        default:
            return fmt::format("unimplemented command variant {}", static_cast<int>(c.which()));
    }
    return out;
}

class KasminaBusAgent {
public:
    KasminaBusAgent(Trainer& trainer, const KasminaBusOptions& o, const std::atomic<bool>& stop)
        : trainer_(trainer),
          o_(o),
          stop_(stop),
          name_("kasmina/" + std::to_string(o.rank)),
          telemetry_(ctx_, {.endpoint = o.pub_endpoint,
                            .sender = name_,
                            .run_id = o.run_id,
                            .security = o.security}),
          control_(ctx_, {.endpoint = o.pub_endpoint,
                          .sender = name_,
                          .run_id = o.run_id,
                          .reliability = bus::Reliability::kControl,
                          .security = o.security}),
          worker_(ctx_, {.endpoint = o.rpc_endpoint,
                         .name = name_,
                         .run_id = o.run_id,
                         .security = o.security,
                         .authorize = authorize_request}) {}

    // At every step boundary, before Trainer::boundary().
    void boundary() {
        if (stop_.load()) trainer_.request_stop();
        absorb_last_step();
        worker_.process([this](schema::Envelope::Reader req,
                               schema::Envelope::Payload::Builder rep) { handle(req, rep); });
        publish_events();
        publish_config(false);
        if (heartbeat_clock_.elapsed_ns() > 1'000'000'000) {
            heartbeat_clock_.reset();
            worker_.heartbeat();
            control_.publish("heartbeat." + name_, [&](schema::Envelope::Payload::Builder p) {
                auto h = p.initHeartbeat();
                h.setAgent(name_);
                h.setRole("executor");
                h.setPid(static_cast<uint32_t>(::getpid()));
                h.setUptimeMs(static_cast<uint64_t>(uptime_.elapsed_ns() / 1'000'000));
                h.setStep(static_cast<uint64_t>(trainer_.steps_done()));
                h.setState(trainer_.stop_requested() ? "stopping" : "training");
            });
        }
    }

    // The effective run config, once at startup (rank 0, control class) on config.<run>: the
    // YAML (authoritative) and the fields a consumer routes on (schemas/config.capnp). It goes
    // out at the first boundary that sees a subscriber of the topic connected (so one present at
    // startup receives it), 2 s after startup without one, or when `now`; training never waits.
    void publish_config(bool now) {
        if (config_published_ || o_.rank != 0) return;  // every rank runs the same config
        const std::string topic = "config." + o_.run_id;
        if (!now && !control_.wait_for_subscriber(topic, 0) && uptime_.elapsed_ns() < 2'000'000'000)
            return;
        config_published_ = true;
        const Config& c = trainer_.config();
        const std::vector<int64_t> widths = trainer_.model().seed_layer_widths();
        control_.publish(topic, [&](schema::Envelope::Payload::Builder p) {
            auto rc = p.initRunConfig();
            rc.setRunId(o_.run_id);
            rc.setYaml(config_to_yaml(c));
            rc.setSourcePath(o_.config_path);
            rc.setBackend(std::string(trainer_.backend().name()));
            rc.setSeed(c.run.seed);
            rc.setSteps(static_cast<uint64_t>(trainer_.total_steps()));
            rc.setBatchSize(static_cast<uint32_t>(c.data.batch_size));
            rc.setWorldSize(static_cast<uint32_t>(o_.world));
            rc.setTelemetryIntervalSteps(static_cast<uint32_t>(c.run.telemetry_interval_steps));
            auto layers = rc.initLayers(static_cast<unsigned>(widths.size()));
            for (size_t l = 0; l < widths.size(); ++l) {
                layers[static_cast<unsigned>(l)].setWidth(static_cast<uint32_t>(widths[l]));
                layers[static_cast<unsigned>(l)].setSeeds(
                    static_cast<uint32_t>(trainer_.seeds().table(int32_t(l)).num_seeds()));
            }
        });
    }

    // Adds the newest step to the run-status window once (the window closes in on_telemetry,
    // which runs after the step when telemetry is due, before the next boundary).
    void absorb_last_step() {
        const TrainStep& s = trainer_.last_step();
        if (s.step <= last_seen_step_) return;
        last_seen_step_ = s.step;
        loss_sum_ += s.loss;
        correct_sum_ += s.correct;
        samples_ += trainer_.config().data.batch_size;
        ++loss_steps_;
    }

    void on_telemetry(std::vector<SeedTelemetryRecord>&& records) {
        absorb_last_step();
        if (o_.rank != 0) return;  // all-reduced: every rank holds the global-batch telemetry
        SeedManager& seeds = trainer_.seeds();
        const uint64_t step = static_cast<uint64_t>(trainer_.steps_done());
        for (int32_t layer = 0; layer < seeds.num_layers(); ++layer) {
            const SeedTable& table = seeds.table(layer);
            size_t n = 0;
            for (const auto& r : records) n += r.layer == layer ? 1 : 0;
            telemetry_.publish(
                "telemetry.seeds." + o_.run_id + "." + std::to_string(layer),
                [&](schema::Envelope::Payload::Builder p) {
                    auto b = p.initSeedTelemetry();
                    b.setLayer(static_cast<uint32_t>(layer));
                    b.setStepBegin(last_telemetry_step_);
                    b.setStepEnd(step);
                    b.setWorldSize(1);
                    auto list = b.initSeeds(static_cast<unsigned>(n));
                    unsigned i = 0;
                    for (const auto& r : records) {
                        if (r.layer != layer) continue;
                        auto out = list[i++];
                        out.setSeed(static_cast<uint32_t>(r.seed));
                        out.setStage(to_wire(r.stage));
                        out.setAlpha(r.alpha);
                        out.setStepsInStage(r.steps_in_stage);
                        if (r.mean && r.variance) {
                            out.setActMean(static_cast<float>(*r.mean));
                            out.setActVar(static_cast<float>(*r.variance));
                            out.setDeadFraction(static_cast<float>(r.dead_fraction.value_or(0)));
                            out.setHealth(static_cast<float>(r.health.value_or(0)));
                            out.setActivationMeasured(true);
                        }
                        if (r.grad_norm) {
                            out.setGradNorm(static_cast<float>(*r.grad_norm));
                            out.setBlueprintGradNorm(
                                static_cast<float>(r.blueprint_grad_norm.value_or(0)));
                            out.setGradientMeasured(true);
                        }
                        if (r.contribution) {
                            out.setContribution(static_cast<float>(*r.contribution));
                            out.setContributionMeasured(true);
                        }
                        if (auto gh = seeds.gradient_health({layer, r.seed})) {
                            out.setGradientHealth(static_cast<float>(*gh));
                            out.setGradientHealthMeasured(true);
                        }
                        const int32_t w = table.chunk_width(r.seed);
                        out.setChunkWidth(static_cast<uint32_t>(w));
                        if (table.slot(r.seed) >= 0)
                            out.setBlueprintParams(static_cast<uint64_t>(
                                seeds.seed_blueprint_params({layer, int32_t(r.seed)})));
                        // The controller prices germinations with these; it never recomputes them.
                        auto prices = out.initGerminationParams(kNumBlueprintKinds);
                        for (int k = 0; k < kNumBlueprintKinds; ++k)
                            prices.set(static_cast<unsigned>(k),
                                       seeds.germination_params({layer, int32_t(r.seed)},
                                                                static_cast<BlueprintKind>(k)));
                    }
                });
        }
        last_telemetry_step_ = step;
        publish_run_status();
    }

    void publish_run_status() {
        const SeedManager& seeds = trainer_.seeds();
        const int64_t host = trainer_.model().param_count();
        telemetry_.publish("telemetry.run." + o_.run_id, [&](schema::Envelope::Payload::Builder p) {
            fill_status(p.initRunStatus(), host, seeds);
        });
        loss_sum_ = 0;
        correct_sum_ = 0;
        samples_ = 0;
        loss_steps_ = 0;
        interval_clock_.reset();
    }

    void fill_status(schema::RunStatus::Builder s, int64_t host, const SeedManager& seeds) {
        const TrainStep& last = trainer_.last_step();
        s.setStep(static_cast<uint64_t>(trainer_.steps_done()));
        s.setEpoch(static_cast<uint32_t>(last.epoch));
        if (loss_steps_ > 0) {
            s.setLoss(static_cast<float>(loss_sum_ / static_cast<double>(loss_steps_)));
            s.setLossMeasured(true);
            s.setAccuracy(static_cast<float>(static_cast<double>(correct_sum_) /
                                             static_cast<double>(samples_)));
            s.setAccuracyMeasured(true);
            double secs = interval_clock_.elapsed_s();
            s.setSamplesPerS(secs > 0 ? static_cast<double>(samples_) / secs : 0.0);
            s.setStepTimeMs(static_cast<float>(secs * 1e3 / static_cast<double>(loss_steps_)));
        }
        s.setLr(static_cast<float>(last.lr));
        s.setHostParams(static_cast<uint64_t>(host));
        s.setBlueprintParams(static_cast<uint64_t>(trainer_.param_count() - host));
        std::array<uint32_t, kernels::kNumSeedStages> counts{};
        for (int32_t l = 0; l < seeds.num_layers(); ++l)
            for (int i = 0; i < kernels::kNumSeedStages; ++i)
                counts[i] +=
                    static_cast<uint32_t>(seeds.table(l).count_in_stage(static_cast<SeedStage>(i)));
        auto list = s.initSeedsPerStage(kernels::kNumSeedStages);
        for (int i = 0; i < kernels::kNumSeedStages; ++i) list.set(i, counts[i]);
        s.setBackend(std::string(trainer_.backend().name()));
        s.setTotalSteps(static_cast<uint64_t>(trainer_.total_steps()));
        // The newest evaluation rides on every status, so rules on run.test_* see it.
        if (const EvalResult& e = trainer_.last_eval(); e.samples > 0) {
            s.setTestStep(static_cast<uint64_t>(e.step));
            s.setTestLoss(static_cast<float>(e.loss));
            s.setTestAccuracy(static_cast<float>(e.accuracy));
            s.setTestMeasured(true);
            if (e.bits_per_byte && std::isfinite(*e.bits_per_byte)) {  // text data only
                s.setTestBitsPerByte(static_cast<float>(*e.bits_per_byte));
                s.setTestBitsPerByteMeasured(true);
            }
        }
        s.setState(state_);
        s.setStateReason(state_reason_);
    }

    // The last status of the run: on telemetry.run.<run> as usual, and on events.run.<run>
    // (control class, lossless) so `esper tap --until-end` and the dashboard learn the run ended.
    void publish_final_status(bool stopped) {
        state_ = stopped ? schema::RunState::STOPPED : schema::RunState::FINISHED;
        state_reason_ = stopped ? "stop requested (signal)" : "all planned steps done";
        const int64_t host = trainer_.model().param_count();
        control_.publish("events.run." + o_.run_id, [&](schema::Envelope::Payload::Builder p) {
            fill_status(p.initRunStatus(), host, trainer_.seeds());
        });
        publish_run_status();
    }

    // Publishes every lifecycle event since the last call (also written to events.jsonl).
    void publish_events() {
        std::vector<LifecycleEvent> events = trainer_.seeds().drain_events();
        if (o_.rank != 0) return;  // every rank has the same events; rank 0 publishes them
        for (const LifecycleEvent& e : events) {
            control_.publish("events.lifecycle." + o_.run_id + "." + std::to_string(e.layer),
                             [&](schema::Envelope::Payload::Builder p) {
                                 auto t = p.initLifecycleTransition();
                                 t.setStep(static_cast<uint64_t>(e.step));
                                 t.setLayer(static_cast<uint32_t>(e.layer));
                                 t.setSeed(static_cast<uint32_t>(e.seed));
                                 t.setFrom(to_wire(e.from));
                                 t.setTo(to_wire(e.to));
                                 t.setReason(e.reason);
                                 t.setOrigin(to_wire(e.origin));
                                 t.setAlpha(trainer_.seeds().table(e.layer).alpha(e.seed));
                             });
        }
    }

    void ack(schema::CommandAck::Builder a, const std::string& id,
             const std::string& outcome_reason, schema::CommandOutcome outcome) {
        a.setCommandId(id);
        a.setOutcome(outcome);
        a.setReason(outcome_reason);
        a.setSeedTableDigest(trainer_.seeds().digest());
        a.setStep(static_cast<uint64_t>(trainer_.steps_done()));
    }

    void apply(schema::Command::Reader c, schema::CommandAck::Builder a) {
        std::string id = c.getCommandId().cStr();
        if (o_.rank != 0) {  // data-parallel: only the leader changes the seed tables
            ack(a, id, "commands go to rank 0 (kasmina/0); this is " + name_,
                schema::CommandOutcome::REJECTED);
            return;
        }
        auto cmd = to_command(c, trainer_.config(), origin_of(worker_.peer(), c));
        if (auto* why = std::get_if<std::string>(&cmd)) {
            bool unimpl = why->rfind("unimplemented", 0) == 0;
            ack(a, id, *why,
                unimpl ? schema::CommandOutcome::UNIMPLEMENTED : schema::CommandOutcome::REJECTED);
            ESPER_LOG_WARN(log(), "command=", id, " refused: ", *why);
            return;
        }
        Outcome o = trainer_.apply(std::get<Command>(cmd));
        ack(a, id, o.reason,
            o.applied() ? schema::CommandOutcome::APPLIED : schema::CommandOutcome::REJECTED);
        ESPER_LOG_INFO(log(), "command=", id, " step=", trainer_.steps_done(),
                       " outcome=", o.applied() ? "applied" : "rejected",
                       o.applied() ? "" : " reason=", o.reason);
        publish_events();  // the transitions this command caused, before the ack leaves
    }

    void handle(schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
        auto p = req.getPayload();
        if (p.isCommand()) {
            apply(p.getCommand(), rep.initCommandAck());
            return;
        }
        auto reply = rep.initControlReply();
        if (!p.isControlRequest()) {
            reply.setOk(false);
            reply.setUnimplemented("kasmina serves command and controlRequest payloads");
            return;
        }
        auto r = p.getControlRequest();
        reply.setOk(true);
        switch (r.which()) {
            case schema::ControlRequest::STATUS:
                fill_status(reply.initStatus(), trainer_.model().param_count(), trainer_.seeds());
                break;
            case schema::ControlRequest::COMMAND:
                apply(r.getCommand(), reply.initCommandAck());
                break;
            case schema::ControlRequest::PING:
                reply.setPong(r.getPing());
                break;
            default:
                reply.setOk(false);
                reply.setUnimplemented("request not served by kasmina");
                break;
        }
    }

private:
    Trainer& trainer_;
    const KasminaBusOptions& o_;
    const std::atomic<bool>& stop_;
    std::string name_;
    zmq::context_t ctx_;
    bus::TelemetryPublisher telemetry_;
    bus::Publisher control_;
    bus::RpcWorker worker_;
    Stopwatch heartbeat_clock_, uptime_, interval_clock_;
    uint64_t last_telemetry_step_ = 0;
    bool config_published_ = false;
    int64_t last_seen_step_ = 0;
    double loss_sum_ = 0;
    int64_t correct_sum_ = 0, samples_ = 0, loss_steps_ = 0;
    schema::RunState state_ = schema::RunState::TRAINING;
    std::string state_reason_;
};

}  // namespace

int run_kasmina_bus(Trainer& trainer, const KasminaBusOptions& options,
                    const std::atomic<bool>& stop) {
    KasminaBusAgent agent(trainer, options, stop);
    ESPER_LOG_INFO(log(), "run=", options.run_id, " rank=", options.rank,
                   " steps=", trainer.total_steps(), " rpc=", options.rpc_endpoint,
                   " pub=", options.pub_endpoint);
    agent.boundary();  // register and publish the initial state before the first step
    while (!trainer.done()) {
        agent.boundary();  // commands, events, heartbeat; a stop signal becomes request_stop
        if (!trainer.boundary()) break;
        trainer.step();
        StepReport due = trainer.after_step();
        if (due.telemetry) {
            agent.on_telemetry(std::move(*due.telemetry));  // its run status has the eval too
        } else if (due.eval && options.rank == 0) {
            agent.publish_run_status();  // test metrics reach the bus when they are measured
        }
        if (due.epoch) print_epoch_summary(*due.epoch);
    }
    if (options.world > 1)  // before the last boundary: commands applied there reach rank 0 only
        ESPER_LOG_INFO(log(), "rank=", options.rank, " world=", options.world,
                       " step=", trainer.steps_done(), " final digest=", trainer.seeds().digest());
    agent.publish_config(true);  // a run shorter than the grace period still announces it
    agent.boundary();            // events of the last step, commands that arrived during it
    if (trainer.stop_requested()) {
        // A stop between epochs: evaluate what we have so the run directory ends with a test line.
        const EvalResult e = trainer.evaluate();
        std::printf("stopped at step %lld: test_loss %.4f test_accuracy %.4f\n",
                    (long long)trainer.steps_done(), e.loss, e.accuracy);
    }
    if (options.rank == 0) agent.publish_final_status(trainer.stop_requested());
    if (options.rank == 0 && !options.run_dir.empty()) {
        fs::path dir =
            fs::path(options.run_dir) / "checkpoints" / std::to_string(trainer.steps_done());
        if (!fs::exists(dir)) trainer.save_checkpoint(dir);
        std::printf("final checkpoint %s\n", dir.c_str());
    }
    std::fflush(stdout);
    return 0;
}

}  // namespace esper::agents
