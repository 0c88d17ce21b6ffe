// The CPU training loop (see trainer.h).
#include "kasmina/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <utility>
#include <variant>

#include "core/check.h"
#include "core/clock.h"
#include "core/log.h"
#include "kasmina/dist/distributed.h"
#include "kasmina/model/gradmax.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

namespace fs = std::filesystem;

namespace {

Logger& trainer_log() { return logger("kasmina.trainer"); }

}  // namespace

Trainer::Trainer(const Config& config, TrainerOptions options)
    : Trainer(config, load_train_data(config, options.rank, options.world), std::move(options)) {}

Trainer::Trainer(const Config& config, DataSplits data, TrainerOptions options)
    : Trainer(config,
              std::make_unique<FeatureData>(std::move(data), config.data.batch_size,
                                            config.run.seed, options.rank, options.world),
              std::move(options)) {}

Trainer::Trainer(const Config& config, std::unique_ptr<TrainData> data, TrainerOptions options)
    : config_(config),
      options_(std::move(options)),
      data_(std::move(data)),
      governor_(config.governor) {
    init();
}

Trainer::~Trainer() = default;

void Trainer::init() {
    if (options_.rank != 0) options_.run_dir.clear();  // only rank 0 writes files
    model_ = make_model(config_.model, data_->in_features(), data_->classes(), config_.run.seed);
    if (!options_.run_dir.empty()) {
        fs::create_directories(options_.run_dir);
        events_ =
            std::make_unique<EventLog>((fs::path(options_.run_dir) / "events.jsonl").string());
        metrics_ = std::make_unique<MetricsLog>(fs::path(options_.run_dir) / "metrics.jsonl");
    }
    const bool layer_input = config_.blueprints.input == BlueprintInput::kLayer;
    ESPER_CHECK_INPUT(!layer_input || config_.model.kind == ModelKind::kMlp,
                      "blueprints.input: layer is for the MLP host; the transformer widens through "
                      "its mlp_units, attention_head and lora seeds");
    seeds_ = std::make_unique<SeedManager>(seed_manager_config(config_), model_->seed_sites(),
                                           events_.get());
    optimizer_ = std::make_unique<Optimizer>(config_.optimizer, model_->params(),
                                             model_->seed_layer_widths());
    std::vector<int32_t> per_layer;
    for (int32_t l = 0; l < seeds_->num_layers(); ++l)
        per_layer.push_back(seeds_->table(l).num_seeds());
    telemetry_ = std::make_unique<Telemetry>(per_layer);
    telemetry_->set_ablation(config_.lifecycle.contribution == ContributionMeasure::kAblation);
    total_steps_ = config_.run.max_steps > 0 ? config_.run.max_steps
                                             : config_.run.epochs * data_->steps_per_epoch();
    init_distributed();
    StepBackendOptions o;
    o.batch = int32_t(config_.data.batch_size * data_->rows_per_sample());
    o.eval_batch = int32_t(options_.eval_batch);
    o.world = options_.world;
    o.dist = dist_.get();
    o.nccl = options_.nccl;
    o.time_grad_reduce = options_.time_grad_reduce;
    o.grad_bucket_bytes = options_.grad_bucket_bytes;
    backend_ = make_step_backend(config_, *model_, *seeds_, *optimizer_, o);
    capture(last_good_);
    last_good_seeds_ = seeds_->snapshot();
}

void Trainer::init_distributed() {
    if (options_.world <= 1) return;
    const Collectives* comm = options_.collectives;
    ESPER_REQUIRE(
        comm != nullptr && comm->world() == options_.world && comm->rank() == options_.rank,
        "world ", options_.world, " needs matching TrainerOptions::collectives");
    // CUDA: gradients are averaged on the device (NcclComm, in the backend's step graph);
    // DistributedSync's host gradient buckets are then unused (the CPU backend uses them).
    dist_ = std::make_unique<DistributedSync>(*options_.collectives, config_, *model_, *seeds_,
                                              options_.fold_sync_flags);
}

int64_t Trainer::param_count() const {
    int64_t n = model_->param_count();
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) n += seeds_->blueprint_params_in_layer(l);
    return n;
}

namespace {

// Why the backend cannot run a germination of `c` (a batch: its first refused one), or empty.
std::string germination_refusal(const StepBackend& backend, const Command& c) {
    if (const auto* g = std::get_if<GerminateCommand>(&c.body))
        return backend.germination_refusal(*g);
    if (const auto* b = std::get_if<BatchCommand>(&c.body))
        for (const Command& inner : b->commands)
            if (std::string why = germination_refusal(backend, inner); !why.empty()) return why;
    return {};
}

}  // namespace

Outcome Trainer::apply(const Command& command) {
    if (std::string why = germination_refusal(*backend_, command); !why.empty())
        return Outcome{OutcomeStatus::kRejected, std::move(why)};
    // world > 1: rank 0's commands reach every rank at the next boundary (DistributedSync).
    if (dist_) return dist_->submit(command);
    return seeds_->apply(command);
}

TrainStep Trainer::step() {
    ESPER_REQUIRE(!done(), "step ", step_, " of ", total_steps_);
    Stopwatch sw;
    const int64_t s = step_;
    const int32_t B = int32_t(config_.data.batch_size);
    TrainStep out;
    out.epoch = s / data_->steps_per_epoch();
    int64_t ablation_forwards = 0;
    init_germinated();
    const bool folded = fold_fossils();
    // A device backend holds the trained parameters the grown blocks are made from.
    if (model_->host_growth_due(s)) backend_->download_all();
    const bool grew = model_->grow_host(s);
    if (grew) {
        backend_->upload_all();
        ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "grow_host step=", s,
                     " host_params=", model_->param_count());
    }
    if (folded || grew) {  // the last-known-good state includes the new host
        capture(last_good_);
        last_good_seeds_ = seeds_->snapshot();
    }
    const Batch batch = data_->train_batch(s);

    const StepRates rates{
        scheduled_lr(config_.optimizer, config_.optimizer.lr, s, total_steps_),
        scheduled_lr(config_.optimizer, config_.optimizer.blueprint_lr, s, total_steps_),
        model_->host_lr_ramp(s)};
    out.lr = rates.lr;
    telemetry_->begin_step();
    // CUDA runs the update too (one graph); a governor trip below restores the last-known-good
    // state over it.
    StepResult r = backend_->run_step(batch, rates, *telemetry_);
    if (dist_) {
        dist_->reduce_step_stats(telemetry_->step_accums(), r.loss, r.correct);
        r.finite = r.finite && std::isfinite(r.loss);
    }
    telemetry_->record_blueprint_grads(*seeds_);
    double loss = r.loss;
    bool finite = r.finite;
    if (config_.faults.nan_at_step == s) {
        // The host gradient is read by the CPU update only (the CUDA step keeps its own).
        loss = std::nan("");
        (*model_->params().front().grad)[0] = std::nanf("");
        finite = false;
    }

    out.loss = loss;
    out.correct = r.correct;
    const Vitals vitals = governor_.check(loss, finite);
    if (vitals != Vitals::kOk) {
        out.governor_tripped = true;
        ESPER_LOG_AT(trainer_log(), LogLevel::kWarn, "step=", s + 1, " ", governor_.last_reason(),
                     " restoring step ", last_good_.step);
        restore(last_good_, false);
        const int64_t moved = seeds_->governor_rollback(last_good_seeds_, governor_.last_reason());
        // Rolled-back seeds change the function. Judged against the seeded network's losses the
        // host alone can look divergent at every step after, and a converged run (mean loss
        // 0.0016, the host without its grafting seeds at 0.01-0.07) gave up 20 trips later.
        if (moved > 0) governor_.forget_history();
        backend_->upload_all();
        ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "governor rolled_back_seeds=", moved);
        // A NaN-weight start (or a state that fails again from its last-known-good) would
        // otherwise train on with loss: null every step and exit 0.
        if (governor_.gave_up())
            ESPER_THROW(kFailed, "governor: ", governor_.consecutive_trips(),
                        " consecutive steps tripped (last: ", governor_.last_reason(),
                        ") after restoring step ", last_good_.step,
                        "; the run cannot recover and stops");
        StepMetrics m;
        m.loss = governor_.window().empty() ? 0.0 : governor_.window().back();
        seeds_->on_step_end(s, m);
    } else {
        backend_->commit_step(rates);
        if (telemetry_->ablation() && (s + 1) % config_.run.telemetry_interval_steps == 0)
            ablation_forwards = measure_ablation(s);
        const StepMetrics m = telemetry_->end_step(loss, *seeds_);
        seeds_->on_step_end(s, m);
        epoch_loss_sum_ += loss;
        ++epoch_loss_steps_;
    }
    step_ = s + 1;
    out.step = step_;
    if (vitals == Vitals::kOk && governor_.snapshot_due(step_)) {
        backend_->download_all();
        capture(last_good_);
        last_good_seeds_ = seeds_->snapshot();
    }
    const double secs = sw.elapsed_s();
    out.samples_per_s = secs > 0 ? double(B) * options_.world / secs : 0.0;
    if (metrics_) {
        const int64_t host = model_->param_count();
        const int64_t bp = param_count() - host;
        // Blueprints are dense layers over the seed layer's rows (6 FLOPs per weight and row);
        // an ablation forward costs a third of that (a forward, no backward).
        const double step_flops =
            model_->train_flops(batch.samples, batch.rows) + 6.0 * double(bp) * double(batch.rows);
        const double flops =
            step_flops * (1.0 + double(ablation_forwards) / 3.0) * double(options_.world);
        metrics_->write(TrainMetrics{out.step, out.epoch, out.loss, out.lr, out.samples_per_s, host,
                                     bp, total_steps_, flops});
    }
    last_step_ = out;
    return out;
}

int64_t Trainer::measure_ablation(int64_t step) {
    std::vector<SeedRef> measured;
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        const SeedTable& t = seeds_->table(l);
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            // FOSSILIZED seeds are past every decision; a seed whose forward value is the host's
            // (TRAINING, GRAFTING at α = 0) contributes exactly nothing.
            if (t.slot(s) < 0 || t.stage(s) >= SeedStage::kFossilized) continue;
            if (kernels::stage_forward_alpha(t.stage(s), t.alpha(s)) == 0.0f)
                telemetry_->set_ablated(l, s, 0.0);
            else
                measured.push_back({l, s});
        }
    }
    // Every rank holds the same seed table, so every rank measures the same seeds (or none).
    if (measured.empty()) return 0;
    const int64_t batches = std::min(config_.lifecycle.ablation_batches, step + 1);
    std::vector<float> c(measured.size(), 0.0f);
    for (int64_t k = 0; k < batches; ++k) {
        // The step's own batch first; the data's buffer is refilled by each call.
        const Batch batch = data_->train_batch(step - k);
        const double with = backend_->eval_batch(batch).loss;
        for (size_t i = 0; i < measured.size(); ++i) {
            const SeedRow saved = seeds_->mute(measured[i]);
            const double without = backend_->eval_batch(batch).loss;
            seeds_->unmute(measured[i], saved);  // the device copy follows at the next sync
            c[i] += float((without - with) / double(batches));
        }
    }
    if (dist_) {
        dist_->all_reduce_sum(c);
        for (float& v : c) v /= float(options_.world);
    }
    for (size_t i = 0; i < measured.size(); ++i)
        telemetry_->set_ablated(measured[i].layer, measured[i].seed, double(c[i]));
    return batches * (int64_t(measured.size()) + 1);
}

EvalResult Trainer::evaluate() {
    EvalResult e;
    e.step = step_;
    e.epoch = step_ / data_->steps_per_epoch();
    const int64_t n = data_->eval_samples();
    const int64_t per = data_->rows_per_sample();
    const int64_t chunk = std::max<int64_t>(1, options_.eval_batch / per);
    double loss_sum = 0.0;
    int64_t correct = 0;
    for (int64_t first = 0; first < n; first += chunk) {
        const int64_t b = std::min(chunk, n - first);
        const BatchResult r = backend_->eval_batch(data_->eval_batch(first, b));
        loss_sum += r.loss * double(r.rows);
        correct += r.correct;
    }
    const int64_t rows = n * per;
    e.samples = n;
    e.loss = rows > 0 ? loss_sum / double(rows) : 0.0;
    e.accuracy = rows > 0 ? double(correct) / double(rows) : 0.0;
    if (data_->bytes()) {
        e.bits_per_byte = e.loss / std::log(2.0);
        e.perplexity = std::exp(e.loss);
    }
    last_eval_ = e;
    return e;
}

void Trainer::init_germinated() {
    const BlueprintInit init = config_.blueprints.init;
    if (init == BlueprintInit::kRandom) return;
    // A seed germinated since the last step is GERMINATED with no step in the stage: a pure
    // function of the seed table, so a resumed or rolled-back run re-initialises exactly what
    // the uninterrupted one did.
    bool downloaded = false;
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        const SeedTable& t = seeds_->table(l);
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            if (t.stage(s) != SeedStage::kGerminated || t.steps_in_stage(s) != 0 || t.slot(s) < 0)
                continue;
            const BlueprintKind kind = t.kind(s);
            const bool split = init == BlueprintInit::kSplit && model_->kind() == "mlp" &&
                               kind == BlueprintKind::kResidualMlp &&
                               seeds_->arenas(l).in_width() > 0;
            const bool gradmax =
                init == BlueprintInit::kGradmax && kind == BlueprintKind::kMlpUnits;
            if (!split && !gradmax) continue;
            // On the GPU the host copy of the weights is refreshed only by a download.
            if (!std::exchange(downloaded, true)) backend_->download_all();
            if (split)
                split_units(l, s);
            else
                gradmax_units(l, s);
        }
    }
    if (downloaded) backend_->upload_all();  // the device may already hold the first draw
}

void Trainer::split_units(int32_t l, int32_t s) {
    const SeedTable& t = seeds_->table(l);
    BlueprintArenas& arenas = seeds_->arenas(l);
    const int64_t n = arenas.in_width();
    // MLP parameters in order: hidden<l>.weight [D, n], hidden<l>.bias [D], ...
    const Tensor& w = *model_->params()[size_t(2 * l)].value;
    const Tensor& b = *model_->params()[size_t(2 * l + 1)].value;
    std::span<float> p = arenas.params(BlueprintKind::kResidualMlp, t.slot(s));
    const int64_t hidden = arenas.hidden(BlueprintKind::kResidualMlp);
    const auto o = kernels::mlp_slot_offsets(arenas.max_width(), hidden, n);
    const int32_t c0 = t.chunk_begin(s), cw = t.chunk_width(s);
    // Noise breaks the symmetry between copies of one unit (their output rows start at 0 and
    // would otherwise get the same gradient forever).
    Rng rng(mix_seed(config_.run.seed, uint64_t(step_) * 131 + uint64_t(l) * 17 + uint64_t(s)));
    const float noise = 0.1f / std::sqrt(float(n));
    for (int64_t j = 0; j < hidden; ++j) {
        const int64_t unit = c0 + j % cw;
        for (int64_t i = 0; i < n; ++i)
            p[size_t(o.v + j * n + i)] = w[unit * n + i] + rng.uniform(-noise, noise);
        p[size_t(o.b1 + j)] = b[unit];
    }
    ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "split layer=", l, " seed=", s, " units=", hidden,
                 " from host units ", c0, "..", c0 + cw - 1);
}

void Trainer::gradmax_units(int32_t l, int32_t s) {
    BlueprintArenas& arenas = seeds_->arenas(l);
    // mlp_units read in_width features and write max_width (widening_offsets' C and O).
    const int64_t in = arenas.in_width(), out = arenas.max_width();
    // G over the next few training batches of this rank (the step's own first), summed over
    // ranks so that every rank places the same units.
    std::vector<float> g(size_t(out * in), 0.0f);
    for (int64_t k = 0; k < kGradmaxBatches; ++k) {
        const bool site = model_->widening_gradient(l, data_->train_batch(step_ + k), g);
        ESPER_ASSERT(site, "seed layer ", l, " is no widening site");
    }
    if (dist_) dist_->all_reduce_sum(g);
    const int64_t k = arenas.hidden(BlueprintKind::kMlpUnits);
    const GradmaxDirections d = gradmax_directions(g, out, in, k);
    // Each placed row gets the norm a random row of the U(±1/√in) draw has on average (1/√3);
    // the units past G's rank keep that draw, and the bias and the output side stay zero.
    std::span<float> p = arenas.params(BlueprintKind::kMlpUnits, seeds_->table(l).slot(s));
    const WideningOffsets o = widening_offsets(BlueprintKind::kMlpUnits, in, k, out);
    const float norm = 1.0f / std::sqrt(3.0f);
    for (int64_t j = 0; j < d.rows; ++j)
        for (int64_t i = 0; i < in; ++i)
            p[size_t(o.in_w + j * in + i)] = norm * d.v[size_t(j * in + i)];
    ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "gradmax layer=", l, " seed=", s, " units=", k,
                 " placed=", d.rows, " sigma_max=", d.rows > 0 ? d.sigma[0] : 0.0);
}

bool Trainer::fold_fossils() {
    bool any = false;
    bool downloaded = false;
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        if (seeds_->site_kind(l) != SiteKind::kWidening) continue;
        const SeedTable& t = seeds_->table(l);
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            if (t.stage(s) != SeedStage::kFossilized || t.slot(s) < 0) continue;
            const BlueprintKind kind = t.kind(s);
            const std::span<const float> p = seeds_->arenas(l).params(kind, t.slot(s));
            if (!model_->can_fold_widening(l, kind, int64_t(p.size()))) continue;
            // On the GPU the host copy of the weights is refreshed only by a download; the
            // upload below takes the folded room into the device step.
            if (!std::exchange(downloaded, true)) backend_->download_all();
            if (!model_->fold_widening(l, kind, p))
                continue;  // no room left: it stays a frozen blueprint
            seeds_->release_folded({l, s});
            ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "fold layer=", l, " seed=", s,
                         " kind=", blueprint_kind_name(kind),
                         " host_params=", model_->param_count());
            any = true;
        }
    }
    if (downloaded) backend_->upload_all();
    return any;
}

std::vector<SeedTelemetryRecord> Trainer::collect_telemetry() {
    return telemetry_->collect(*seeds_);
}

bool Trainer::boundary() {
    if (!loop_started_) {
        loop_started_ = true;
        epoch_clock_.reset();
    }
    if (!dist_) return !stop_requested_;
    // A stop requested here reaches the other ranks with the next step's statistics (fold_flags),
    // so every rank leaves at the same boundary: only the agreed answer counts.
    if (!dist_->sync_boundary(stop_requested_)) return true;
    stop_requested_ = true;
    return false;
}

StepReport Trainer::after_step() {
    StepReport due;
    if (dist_) {
        // CUDA: host parameters are refreshed only on download; the digest needs them.
        const int64_t every = config_.run.digest_every_steps;
        if (every > 0 && step_ % every == 0) backend_->download_all();
        dist_->after_step(step_);
    }
    const int64_t interval = config_.run.telemetry_interval_steps;
    if (interval > 0 && step_ % interval == 0) due.telemetry = collect_telemetry();
    const int64_t spe = data_->steps_per_epoch();
    const bool epoch_end = step_ % spe == 0 || done();
    const int64_t every = config_.run.eval_every_steps;
    if (epoch_end || (every > 0 && step_ % every == 0)) {
        due.eval = evaluate();
        if (metrics_)
            metrics_->write(TestMetrics{due.eval->step, due.eval->epoch, due.eval->loss,
                                        due.eval->accuracy, due.eval->bits_per_byte,
                                        due.eval->perplexity});
        if (epoch_end) {
            EpochSummary sum;
            sum.epoch = (step_ + spe - 1) / spe;
            sum.step = step_;
            sum.train_loss = epoch_loss_steps_ ? epoch_loss_sum_ / double(epoch_loss_steps_) : 0.0;
            sum.test = *due.eval;
            sum.seconds = epoch_clock_.elapsed_s();
            for (int32_t l = 0; l < seeds_->num_layers(); ++l)
                sum.active_seeds += seeds_->table(l).count_active() +
                                    seeds_->table(l).count_in_stage(SeedStage::kFossilized);
            sum.param_count = param_count();
            due.epoch = sum;
            epoch_loss_sum_ = 0.0;
            epoch_loss_steps_ = 0;
            epoch_clock_.reset();
        }
    }
    const int64_t ck = config_.run.checkpoint_every_steps;
    if (ck > 0 && step_ % ck == 0 && !options_.run_dir.empty()) {
        due.checkpoint = fs::path(options_.run_dir) / "checkpoints" / std::to_string(step_);
        save_checkpoint(*due.checkpoint);
    }
    return due;
}

// ---- state capture / restore (checkpoints and the governor's last-known-good) ----

void Trainer::capture(CheckpointData& out) const {
    out = CheckpointData();
    out.step = step_;
    out.run_id = "seed-" + std::to_string(config_.run.seed);
    out.config_yaml = config_to_yaml(config_);
    out.trainer.step = step_;
    out.trainer.total_steps = total_steps_;
    out.trainer.epoch_loss_sum = epoch_loss_sum_;
    out.trainer.epoch_loss_steps = epoch_loss_steps_;
    out.trainer.governor_window.assign(governor_.window().begin(), governor_.window().end());
    out.trainer.governor_trips = governor_.trips();
    out.trainer.model_structure = model_->structure();
    for (const ParamRef& p : model_->params()) out.put_floats("param." + p.name, p.value->span());
    optimizer_->save(out);
    out.seeds = seeds_->snapshot();
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        const BlueprintArenas& a = seeds_->arenas(l);
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            const std::string base = "arena.l" + std::to_string(l) + ".k" + std::to_string(k);
            out.put_floats(base + ".params", a.all_params(BlueprintKind(k)));
            out.put_floats(base + ".m", a.all_opt_m(BlueprintKind(k)));
            out.put_floats(base + ".v", a.all_opt_v(BlueprintKind(k)));
        }
    }
}

void Trainer::restore(const CheckpointData& in, bool with_seeds) {
    model_->set_structure(in.trainer.model_structure);  // checks it fits before anything changes
    for (const ParamRef& p : model_->params()) in.floats_into("param." + p.name, p.value->span());
    optimizer_->load(in);
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        BlueprintArenas& a = seeds_->arenas(l);
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            const std::string base = "arena.l" + std::to_string(l) + ".k" + std::to_string(k);
            in.floats_into(base + ".params", a.all_params(BlueprintKind(k)));
            in.floats_into(base + ".m", a.all_opt_m(BlueprintKind(k)));
            in.floats_into(base + ".v", a.all_opt_v(BlueprintKind(k)));
        }
    }
    if (!with_seeds) return;
    seeds_->restore(in.seeds);  // first: it checks the shape before changing anything
    // The writer's total steps are ignored: this run's config decides.
    const TrainerScalars& t = in.trainer;
    step_ = t.step;
    epoch_loss_sum_ = t.epoch_loss_sum;
    epoch_loss_steps_ = t.epoch_loss_steps;
    governor_.set_window(std::deque<double>(t.governor_window.begin(), t.governor_window.end()),
                         t.governor_trips);
}

void Trainer::save_checkpoint(const fs::path& dir) {
    backend_->download_all();
    CheckpointData data;
    capture(data);
    CheckpointWriteOptions opt;
    opt.crash_after_files = int(config_.faults.checkpoint_crash_after_files);
    write_checkpoint(dir, data, opt);
    ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "checkpoint step=", step_, " dir=", dir.string());
}

void Trainer::load_checkpoint(const fs::path& dir) {
    const CheckpointData data = read_checkpoint(dir);
    // Refused before anything changes: a checkpoint resumes only into the model that wrote it.
    const std::string diff =
        model_difference(config_, parse_config(data.config_yaml, dir.string() + "/config"));
    if (!diff.empty())
        ESPER_THROW(kInvalidInput, "checkpoint ", dir.string(), " was written by another model (",
                    diff, ")");
    restore(data, true);
    backend_->upload_all();
    capture(last_good_);
    last_good_seeds_ = seeds_->snapshot();
    ESPER_LOG_AT(trainer_log(), LogLevel::kInfo, "resumed step=", step_, " from ", dir.string());
}

}  // namespace esper::kasmina
