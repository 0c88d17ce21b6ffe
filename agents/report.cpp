// The run report and summary (agents/report.h). The page is web/report.html with its
// placeholders filled: the HTML text rendered here, the chart data as JSON (nlohmann), and the
// scripts and styles of web/ inlined. Stage names are the vocabulary's (kernels/vocabulary.h).
#include "agents/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "web/assets.h"

namespace esper::agents {

namespace {

using nlohmann::json;

// Points the charts get at most; longer series are averaged in buckets.
constexpr size_t kMaxPoints = 2000;
constexpr size_t kMaxEventRows = 5000;

std::string html_escape(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '&':
                out += "&amp;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

int stage_index(const json& v) {
    if (v.is_number_integer()) {
        const auto s = stage_from_value(static_cast<uint64_t>(v.get<int64_t>()));
        return v.get<int64_t>() >= 0 && s ? static_cast<int>(*s) : -1;
    }
    if (!v.is_string()) return -1;
    const auto s = parse_stage(v.get_ref<const std::string&>());
    return s ? static_cast<int>(*s) : -1;
}

std::string stage_label(int i) { return std::string(stage_name(static_cast<SeedStage>(i))); }

std::vector<json> read_jsonl(const std::filesystem::path& path, int& malformed) {
    std::vector<json> out;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object()) {
            ++malformed;
            continue;
        }
        out.push_back(std::move(j));
    }
    return out;
}

json read_json(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) return json::object();
    json j = json::parse(in, nullptr, false);
    return j.is_object() ? j : json::object();
}

// A number for a table or a sentence: 4 significant digits, 2 for very large or small.
std::string label(double v) {
    const double a = std::fabs(v);
    return a != 0 && (a >= 1e6 || a < 1e-3) ? fmt::format("{:.2g}", v) : fmt::format("{:.4g}", v);
}

double num(const json& j, const char* key, double fallback = NAN) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

json num_or_null(const json& j, const char* key) {
    const double v = num(j, key);
    return std::isfinite(v) ? json(v) : json(nullptr);
}

// The lines of one split with a resumed run's overlap resolved: a line whose step is not past
// the previous one restarts the series there (the newer lines win).
std::vector<const json*> split_lines(const std::vector<json>& metrics, const std::string& split) {
    std::vector<const json*> out;
    for (const json& m : metrics) {
        if (m.value("split", "") != split || !std::isfinite(num(m, "step"))) continue;
        const double step = num(m, "step");
        while (!out.empty() && num(*out.back(), "step") >= step) out.pop_back();
        out.push_back(&m);
    }
    return out;
}

// Seeds replayed from the transitions: stage counts after each event (never negative: a seed's
// stage is what its own events said, whatever an event's "from" claims), and each seed's lane.
struct Replay {
    std::array<int, kNumSeedStages> counts{};
    std::array<int, kNumSeedStages> into{};
    std::map<std::pair<int, int>, int> stage_of;
    json stage_counts = json::array();  // [[step, [11 counts]], ...]
    json lanes = json::object();        // "layer:seed" -> [[step, stage, null], ...]
};

Replay replay_events(const std::vector<json>& events) {
    Replay r;
    for (const json& e : events) {
        const double step = num(e, "step");
        const int to = stage_index(e.value("to", json()));
        if (!std::isfinite(step) || to < 0) continue;  // not a transition (policy, annotation)
        const auto key = std::make_pair(e.value("layer", -1), e.value("seed", -1));
        auto it = r.stage_of.find(key);
        const int from = it == r.stage_of.end() ? 0 : it->second;
        if (from != 0 && r.counts[from] > 0) --r.counts[from];
        if (to != 0) ++r.counts[to];
        ++r.into[to];
        r.stage_of[key] = to;
        r.stage_counts.push_back({step, r.counts});
        const std::string lane = fmt::format("{}:{}", key.first, key.second);
        if (to != 0 || r.lanes.contains(lane)) r.lanes[lane].push_back({step, to, nullptr});
    }
    return r;
}

// Keeps at most kMaxPoints of a [[step, ...], ...] list (every k-th, the last always).
json thin(const json& list) {
    if (list.size() <= kMaxPoints) return list;
    const size_t k = (list.size() + kMaxPoints - 1) / kMaxPoints;
    json out = json::array();
    for (size_t i = 0; i < list.size(); ++i)
        if (i % k == k - 1 || i + 1 == list.size()) out.push_back(list[i]);
    return out;
}

// Train points for the charts: the mean loss of each bucket of steps (the per-step loss is too
// noisy to read), the bucket's last step, lr and parameter counts.
json train_points(const std::vector<const json*>& lines) {
    json out = json::array();
    const size_t k = std::max<size_t>(1, (lines.size() + kMaxPoints - 1) / kMaxPoints);
    for (size_t start = 0; start < lines.size(); start += k) {
        const size_t end = std::min(lines.size(), start + k);
        double sum = 0;
        int n = 0;
        for (size_t i = start; i < end; ++i)
            if (const double l = num(*lines[i], "loss"); std::isfinite(l)) sum += l, ++n;
        const json& last = *lines[end - 1];
        out.push_back({{"step", num(last, "step")},
                       {"loss", n > 0 ? json(sum / n) : json(nullptr)},
                       {"lr", num_or_null(last, "lr")},
                       {"host_params", num_or_null(last, "host_params")},
                       {"blueprint_params", num_or_null(last, "blueprint_params")}});
    }
    return out;
}

std::string time_text(const json& j, const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) return "";
    std::string t = it->get<std::string>();
    if (t.size() >= 19) t = t.substr(0, 10) + " " + t.substr(11, 8);
    return t + " UTC";
}

std::string describe_event(const json& e) {
    auto str = [&](const char* k) {
        auto it = e.find(k);
        if (it == e.end()) return std::string();
        return it->is_string() ? it->get<std::string>() : it->dump();
    };
    const std::string kind = e.value("kind", e.contains("to") ? "transition" : "");
    if (kind == "transition") {
        auto stage = [&](const char* k) {
            const int i = stage_index(e.value(k, json()));
            return i >= 0 ? stage_label(i) : str(k);
        };
        return fmt::format("L{} S{} {} → {} ({})", str("layer"), str("seed"), stage("from"),
                           stage("to"), str("origin"));
    }
    if (kind == "policy")
        return fmt::format("policy {}: {}{}", str("action"), str("name"),
                           str("previous").empty() ? "" : " (was " + str("previous") + ")");
    if (kind == "annotation") return fmt::format("[{}] {}", str("label"), str("text"));
    if (kind == "run") return "run " + str("state");
    return kind;
}

// Fills web/report.html: each @NAME@ of the template is replaced once, left to right, so text
// inside the inserted files is never scanned for placeholders.
std::string fill_template(std::string_view tpl, const std::map<std::string, std::string>& values) {
    std::string out;
    size_t pos = 0;
    while (pos < tpl.size()) {
        const size_t at = tpl.find('@', pos);
        if (at == std::string_view::npos) break;
        const size_t end = tpl.find('@', at + 1);
        if (end == std::string_view::npos) break;
        auto it = values.find(std::string(tpl.substr(at + 1, end - at - 1)));
        if (it == values.end()) {
            out.append(tpl.substr(pos, at + 1 - pos));
            pos = at + 1;
            continue;
        }
        out.append(tpl.substr(pos, at - pos));
        out += it->second;
        pos = end + 1;
    }
    out.append(tpl.substr(std::min(pos, tpl.size())));
    return out;
}

}  // namespace

RunSummary summarize_run(const std::filesystem::path& run_dir) {
    RunSummary s;
    std::vector<json> metrics = read_jsonl(run_dir / "metrics.jsonl", s.malformed_lines);
    std::vector<json> events = read_jsonl(run_dir / "events.jsonl", s.malformed_lines);
    for (const json* m : split_lines(metrics, "train")) {
        s.last_step = std::max<int64_t>(s.last_step, static_cast<int64_t>(num(*m, "step")));
        s.train_loss = num(*m, "loss");
        if (double hp = num(*m, "host_params"); std::isfinite(hp))
            s.host_params = static_cast<int64_t>(hp);
        if (double bp = num(*m, "blueprint_params"); std::isfinite(bp))
            s.blueprint_params = static_cast<int64_t>(bp);
    }
    for (const json* m : split_lines(metrics, "test")) {
        s.last_step = std::max<int64_t>(s.last_step, static_cast<int64_t>(num(*m, "step")));
        s.test_accuracy = num(*m, "accuracy");
        s.test_loss = num(*m, "loss");
        s.test_bits_per_byte = num(*m, "bits_per_byte");
    }
    if (s.test_accuracy && !std::isfinite(*s.test_accuracy)) s.test_accuracy.reset();
    if (s.test_loss && !std::isfinite(*s.test_loss)) s.test_loss.reset();
    if (s.test_bits_per_byte && !std::isfinite(*s.test_bits_per_byte))
        s.test_bits_per_byte.reset();
    if (s.train_loss && !std::isfinite(*s.train_loss)) s.train_loss.reset();
    const Replay r = replay_events(events);
    s.seeds_in_stage = r.counts;
    s.transitions_into = r.into;
    const json run = read_json(run_dir / "run.json");
    s.state = run.value("state", "");
    s.state_reason = run.value("reason", "");
    return s;
}

std::string format_summary(const RunSummary& s) {
    std::string out = "run summary\n";
    auto row = [&](std::string_view k, const std::string& v) {
        fmt::format_to(std::back_inserter(out), "  {:<21} {}\n", k, v);
    };
    auto opt = [](const std::optional<double>& v) { return v ? label(*v) : std::string("-"); };
    auto opt_i = [](const std::optional<int64_t>& v) {
        return v ? fmt::format("{}", *v) : std::string("-");
    };
    auto into = [&](SeedStage st) {
        row(fmt::format("into {}", stage_name(st)),
            fmt::format("{}", s.transitions_into[static_cast<size_t>(st)]));
    };
    if (!s.state.empty())
        row("ended", s.state + (s.state_reason.empty() ? "" : ": " + s.state_reason));
    row("steps", s.last_step >= 0 ? fmt::format("{}", s.last_step) : "-");
    row("test accuracy", opt(s.test_accuracy));
    row("test loss", opt(s.test_loss));
    if (s.test_bits_per_byte) row("test bits per byte", label(*s.test_bits_per_byte));
    row("train loss", opt(s.train_loss));
    row("params host", opt_i(s.host_params));
    row("params blueprints", opt_i(s.blueprint_params));
    into(SeedStage::kGerminated);
    into(SeedStage::kFossilized);
    into(SeedStage::kCulled);
    into(SeedStage::kRolledBack);
    std::string stages;
    for (int i = 1; i < kNumSeedStages; ++i)
        if (s.seeds_in_stage[i] != 0)
            stages += fmt::format("{}{}={}", stages.empty() ? "" : ", ", stage_label(i),
                                  s.seeds_in_stage[i]);
    row("seeds per stage", stages.empty() ? "all dormant" : stages);
    return out;
}

std::string render_report(const std::filesystem::path& run_dir) {
    int malformed = 0;
    std::vector<json> metrics = read_jsonl(run_dir / "metrics.jsonl", malformed);
    std::vector<json> events = read_jsonl(run_dir / "events.jsonl", malformed);
    const json run = read_json(run_dir / "run.json");
    const std::vector<const json*> train = split_lines(metrics, "train");
    const std::vector<const json*> test = split_lines(metrics, "test");
    const Replay replay = replay_events(events);
    const RunSummary summary = summarize_run(run_dir);

    // ---- the chart data ----
    json data = json::object();
    data["train"] = train_points(train);
    json test_points = json::array();
    for (const json* t : test)
        test_points.push_back({{"step", num(*t, "step")},
                               {"loss", num_or_null(*t, "loss")},
                               {"accuracy", num_or_null(*t, "accuracy")},
                               {"bits_per_byte", num_or_null(*t, "bits_per_byte")},
                               {"perplexity", num_or_null(*t, "perplexity")}});
    data["test"] = std::move(test_points);
    double max_step = std::max<double>(1.0, static_cast<double>(summary.last_step));
    if (const double planned = train.empty() ? NAN : num(*train.back(), "total_steps");
        std::isfinite(planned) && run.value("state", "") != "stopped" &&
        run.value("state", "") != "failed")
        max_step = std::max(max_step, planned);
    data["max_step"] = max_step;
    json marks = json::array();
    for (const json& e : events) {
        const std::string kind = e.value("kind", "");
        if (kind == "policy" || kind == "annotation" || kind == "run")
            marks.push_back({{"kind", kind}, {"step", num(e, "step", 0)}});
    }
    data["events"] = std::move(marks);
    data["stage_counts"] = thin(replay.stage_counts);
    data["lanes"] = replay.lanes;
    std::map<int, std::vector<int>> grid;  // layer -> stage per seed (seeds never seen: DORMANT)
    for (const auto& [key, stage] : replay.stage_of) {
        if (key.first < 0 || key.second < 0 || key.second > 1'000'000) continue;
        auto& row = grid[key.first];
        if (row.size() <= static_cast<size_t>(key.second)) row.resize(size_t(key.second) + 1, 0);
        row[size_t(key.second)] = stage;
    }
    json grid_json = json::array();
    for (const auto& [layer, stages] : grid)
        grid_json.push_back({{"layer", layer},
                             {"stages", stages},
                             {"alphas", std::vector<double>(stages.size(), 1.0)}});
    data["grid"] = std::move(grid_json);
    std::string data_text = data.dump(-1, ' ', false, json::error_handler_t::replace);
    // Inside <script>, "</" could close the element early: JSON allows "<\/" for it.
    for (size_t at = data_text.find("</"); at != std::string::npos;
         at = data_text.find("</", at + 3))
        data_text.replace(at, 2, "<\\/");

    // ---- the text ----
    std::string body;
    auto os = std::back_inserter(body);
    const std::string run_name = html_escape(run_dir.filename().string());
    const std::string state = run.value("state", "");
    fmt::format_to(os, "<header><h1>Esper run {}</h1>{}</header>", run_name,
                   state.empty() ? ""
                                 : fmt::format("<span class='badge {}'>{}</span>",
                                               html_escape(state), html_escape(state)));
    if (state == "failed")
        fmt::format_to(os, "<p class='failed-box'><b>This run failed.</b> {}</p>",
                       html_escape(run.value("reason", "no reason recorded")));
    else if (state == "stopped")
        fmt::format_to(os, "<p>Stopped early: {}.</p>", html_escape(run.value("reason", "")));
    body += "<section class='panel'><table>";
    auto row = [&](const std::string& k, const std::string& v) {
        fmt::format_to(os, "<tr><th>{}</th><td>{}</td></tr>", k, html_escape(v));
    };
    if (run.contains("started")) row("started", time_text(run, "started"));
    if (run.contains("ended")) row("ended", time_text(run, "ended"));
    if (run.contains("duration_s"))
        row("wall time", fmt::format("{:.1f} s", run.value("duration_s", 0.0)));
    if (run.contains("controller_restarts"))
        row("controller restarts", fmt::format("{}", run.value("controller_restarts", 0)));
    row("steps", summary.last_step >= 0 ? fmt::format("{}", summary.last_step) : "-");
    if (summary.test_accuracy) row("final test accuracy", label(*summary.test_accuracy));
    if (summary.test_loss) row("final test loss", label(*summary.test_loss));
    if (summary.test_bits_per_byte)
        row("final validation bits per byte", label(*summary.test_bits_per_byte));
    if (summary.train_loss) row("final train loss", label(*summary.train_loss));
    if (summary.host_params) row("host parameters", fmt::format("{}", *summary.host_params));
    if (summary.blueprint_params)
        row("blueprint parameters", fmt::format("{}", *summary.blueprint_params));
    std::string stages;
    for (int i = 1; i < kNumSeedStages; ++i)
        if (replay.counts[i] != 0)
            stages += fmt::format("{}{}={}", stages.empty() ? "" : ", ", stage_label(i),
                                  replay.counts[i]);
    row("seeds at the end", stages.empty() ? "all dormant" : stages);
    std::string into;
    for (int i = 1; i < kNumSeedStages; ++i)
        if (replay.into[i] != 0)
            into +=
                fmt::format("{}{}={}", into.empty() ? "" : ", ", stage_label(i), replay.into[i]);
    row("transitions into", into.empty() ? "none" : into);
    body += "</table></section>";
    body +=
        "<section class='row'><div class='panel'><div id='chart-loss'></div></div>"
        "<div class='panel'><div id='chart-quality'></div></div></section>"
        "<section class='panel'><h2>Seed swimlane <span class='muted'>(one row per seed that "
        "left DORMANT)</span></h2><div id='legend' class='legend'></div><div id='swimlane'>"
        "</div></section>"
        "<section class='row'><div class='panel'><div id='chart-stages'></div></div>"
        "<div class='panel'><div id='chart-params'></div></div></section>"
        "<section class='panel'><h2>Seeds by layer at the end</h2><div id='grid'></div>"
        "</section>";
    fmt::format_to(os,
                   "<section class='panel'><h2>Events ({})</h2><table><tr><th>time</th>"
                   "<th>step</th><th>kind</th><th>what</th><th>reason</th></tr>",
                   events.size());
    for (size_t i = 0; i < events.size() && i < kMaxEventRows; ++i) {
        const json& e = events[i];
        const std::string kind = e.value("kind", e.contains("to") ? "transition" : "");
        const std::string reason =
            e.contains("reason") && e["reason"].is_string() ? e["reason"].get<std::string>() : "";
        fmt::format_to(os,
                       "<tr class='ev-{}'><td>{}</td><td class='num'>{}</td><td>{}</td><td>{}</td>"
                       "<td>{}</td></tr>",
                       html_escape(kind), html_escape(time_text(e, "time")),
                       html_escape(e.contains("step") ? e["step"].dump() : ""), html_escape(kind),
                       html_escape(describe_event(e)), html_escape(reason));
    }
    body += "</table>";
    if (events.size() > kMaxEventRows)
        fmt::format_to(os, "<p class='muted'>{} more events in events.jsonl.</p>",
                       events.size() - kMaxEventRows);
    body += "</section>";
    std::ifstream cfg(run_dir / "config.yaml");
    if (cfg) {
        std::stringstream ss;
        ss << cfg.rdbuf();
        fmt::format_to(os,
                       "<section class='panel'><h2>Effective configuration</h2><pre>{}</pre>"
                       "</section>",
                       html_escape(ss.str()));
    }
    if (malformed > 0)
        fmt::format_to(os, "<p class='muted'>{} malformed lines skipped.</p>", malformed);

    return fill_template(
        web::asset_text("/report.html"),
        {{"TITLE", run_name},
         {"UPLOT_CSS", std::string(web::asset_text("/vendor/uplot/uPlot.min.css"))},
         {"STYLE_CSS", std::string(web::asset_text("/style.css"))},
         {"BODY", body},
         {"DATA", data_text},
         {"UPLOT_JS", std::string(web::asset_text("/vendor/uplot/uPlot.iife.min.js"))},
         {"CHARTS_JS", std::string(web::asset_text("/charts.js"))},
         {"REPORT_JS", std::string(web::asset_text("/report.js"))}});
}

std::filesystem::path write_report(const std::filesystem::path& run_dir) {
    std::string html = render_report(run_dir);
    std::filesystem::path out = run_dir / "report.html";
    std::filesystem::path tmp = run_dir / "report.html.tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) ESPER_THROW(kFailed, "cannot write ", tmp.string());
        f << html;
        if (!f) ESPER_THROW(kFailed, "cannot write ", tmp.string());
    }
    std::filesystem::rename(tmp, out);
    return out;
}

}  // namespace esper::agents
