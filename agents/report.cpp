#include "agents/report.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace esper::agents {

const std::array<const char*, 11> kReportStageNames = {
    "DORMANT",   "GERMINATED", "TRAINING", "GRAFTING",  "STABILIZATION", "EVALUATING",
    "FINE_TUNING", "FOSSILIZED", "CULLED",  "CANCELLED", "ROLLED_BACK"};

namespace {

using nlohmann::json;

const auto& kStageNames = kReportStageNames;
constexpr std::array<const char*, 11> kStageColors = {
    "#cccccc", "#9ecae1", "#3182bd", "#31a354", "#a1d99b", "#fdae6b",
    "#e6550d", "#756bb1", "#de2d26", "#969696", "#636363"};

struct Point {
    double x, y;
};
struct Series {
    std::string name;
    std::string color;
    std::vector<Point> points;
    bool steps = false;  // draw as a step function (counts)
};

std::string html_escape(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '&': out += "&amp;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

int stage_index(const json& v) {
    if (v.is_number_integer()) {
        int i = v.get<int>();
        return i >= 0 && i < 11 ? i : -1;
    }
    if (!v.is_string()) return -1;
    std::string s = v.get<std::string>();
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
    for (int i = 0; i < 11; ++i)
        if (s == kStageNames[i]) return i;
    return -1;
}

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

std::string fmt(double v) {
    char buf[32];
    double a = std::fabs(v);
    if (a != 0 && (a >= 1e5 || a < 1e-3))
        std::snprintf(buf, sizeof buf, "%.2g", v);
    else
        std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

// A line chart with axes, ticks and a legend, as an inline <svg>.
std::string svg_chart(const std::string& title, const std::string& ylabel,
                      const std::vector<Series>& series) {
    constexpr double kW = 560, kH = 260, kL = 60, kR = 12, kT = 28, kB = 36;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (const Series& s : series)
        for (const Point& p : s.points) {
            if (!std::isfinite(p.y)) continue;
            x0 = std::min(x0, p.x), x1 = std::max(x1, p.x);
            y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
        }
    std::ostringstream os;
    os << "<svg xmlns='http://www.w3.org/2000/svg' width='" << kW << "' height='" << kH
       << "' class='chart'><text x='" << kL << "' y='18' class='title'>" << html_escape(title)
       << "</text>";
    if (!(x0 <= x1)) {
        os << "<text x='" << kL << "' y='" << kH / 2 << "' class='muted'>no data</text></svg>";
        return os.str();
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + 1;
    double pad = (y1 - y0) * 0.05;
    y0 -= pad, y1 += pad;
    auto sx = [&](double x) { return kL + (x - x0) / (x1 - x0) * (kW - kL - kR); };
    auto sy = [&](double y) { return kT + (1 - (y - y0) / (y1 - y0)) * (kH - kT - kB); };
    os << "<rect x='" << kL << "' y='" << kT << "' width='" << kW - kL - kR << "' height='"
       << kH - kT - kB << "' class='frame'/>";
    for (int i = 0; i <= 4; ++i) {
        double y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
        os << "<line x1='" << kL << "' x2='" << kW - kR << "' y1='" << sy(y) << "' y2='" << sy(y)
           << "' class='grid'/><text x='" << kL - 4 << "' y='" << sy(y) + 4
           << "' class='tick' text-anchor='end'>" << fmt(y) << "</text>";
        os << "<text x='" << sx(x) << "' y='" << kH - kB + 16 << "' class='tick' text-anchor='middle'>"
           << fmt(std::round(x)) << "</text>";
    }
    os << "<text x='" << (kL + kW - kR) / 2 << "' y='" << kH - 4
       << "' class='tick' text-anchor='middle'>step</text>";
    os << "<text x='12' y='" << (kT + kH - kB) / 2 << "' class='tick' text-anchor='middle' "
       << "transform='rotate(-90 12 " << (kT + kH - kB) / 2 << ")'>" << html_escape(ylabel)
       << "</text>";
    double lx = kL + 8;
    for (const Series& s : series) {
        if (s.points.empty()) continue;
        os << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.6' points='";
        double prev_y = NAN;
        for (const Point& p : s.points) {
            if (!std::isfinite(p.y)) continue;
            if (s.steps && std::isfinite(prev_y)) os << sx(p.x) << ',' << sy(prev_y) << ' ';
            os << sx(p.x) << ',' << sy(p.y) << ' ';
            prev_y = p.y;
        }
        os << "'/>";
        os << "<rect x='" << lx << "' y='" << kT + 6 << "' width='10' height='10' fill='" << s.color
           << "'/><text x='" << lx + 14 << "' y='" << kT + 15 << "' class='legend'>"
           << html_escape(s.name) << "</text>";
        lx += 22 + 7.0 * static_cast<double>(s.name.size());
    }
    os << "</svg>";
    return os.str();
}

double num(const json& j, const char* key, double fallback = NAN) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

// Trailing mean over `window` points (the per-step train loss is too noisy to read).
Series smooth(const Series& in, size_t window) {
    Series out = in;
    double sum = 0;
    size_t n = 0;  // finite values inside the window (a governor trip logs a non-finite loss)
    for (size_t i = 0; i < in.points.size(); ++i) {
        if (std::isfinite(in.points[i].y)) sum += in.points[i].y, ++n;
        if (i >= window && std::isfinite(in.points[i - window].y)) sum -= in.points[i - window].y, --n;
        out.points[i].y = n > 0 ? sum / static_cast<double>(n) : NAN;
    }
    return out;
}

// Replays lifecycle events: seeds start DORMANT; counts of non-dormant seeds per stage after
// each event go to `on_event(step, counts, from, to)`.
template <typename F>
void replay_events(const std::vector<json>& events, std::array<int, 11>& counts,
                   std::array<int, 11>& totals, F&& on_event) {
    std::map<std::pair<int, int>, int> stage_of;  // (layer, seed) -> stage
    for (const json& e : events) {
        double step = num(e, "step");
        int to = stage_index(e.value("to", json()));
        if (!std::isfinite(step) || to < 0) continue;
        auto key = std::make_pair(e.value("layer", -1), e.value("seed", -1));
        auto it = stage_of.find(key);
        int from = it == stage_of.end() ? 0 : it->second;
        if (from != 0) --counts[from];
        if (to != 0) ++counts[to];
        ++totals[to];
        stage_of[key] = to;
        on_event(step, from, to);
    }
}

}  // namespace

RunSummary summarize_run(const std::filesystem::path& run_dir) {
    RunSummary s;
    std::vector<json> metrics = read_jsonl(run_dir / "metrics.jsonl", s.malformed_lines);
    std::vector<json> events = read_jsonl(run_dir / "events.jsonl", s.malformed_lines);
    for (const json& m : metrics) {
        double step = num(m, "step");
        if (std::isfinite(step)) s.last_step = std::max<int64_t>(s.last_step, static_cast<int64_t>(step));
        std::string split = m.value("split", "");
        if (split == "test") {
            s.test_accuracy = num(m, "accuracy");
            s.test_loss = num(m, "loss");
        } else if (split == "train") {
            s.train_loss = num(m, "loss");
            if (double hp = num(m, "host_params"); std::isfinite(hp)) s.host_params = static_cast<int64_t>(hp);
            if (double bp = num(m, "blueprint_params"); std::isfinite(bp)) s.blueprint_params = static_cast<int64_t>(bp);
        }
    }
    replay_events(events, s.seeds_in_stage, s.transitions_into, [](double, int, int) {});
    return s;
}

std::string format_summary(const RunSummary& s) {
    std::ostringstream os;
    auto row = [&](const std::string& k, const std::string& v) {
        os << "  " << k << std::string(k.size() < 22 ? 22 - k.size() : 1, ' ') << v << "\n";
    };
    auto opt = [](const std::optional<double>& v) { return v ? fmt(*v) : std::string("-"); };
    auto opt_i = [](const std::optional<int64_t>& v) { return v ? std::to_string(*v) : std::string("-"); };
    os << "run summary\n";
    row("steps", s.last_step >= 0 ? std::to_string(s.last_step) : "-");
    row("test accuracy", opt(s.test_accuracy));
    row("test loss", opt(s.test_loss));
    row("train loss", opt(s.train_loss));
    row("params host", opt_i(s.host_params));
    row("params blueprints", opt_i(s.blueprint_params));
    row("germinated", std::to_string(s.transitions_into[1]));
    row("fossilized", std::to_string(s.transitions_into[7]));
    row("culled", std::to_string(s.transitions_into[8]));
    row("rolled back", std::to_string(s.transitions_into[10]));
    std::string stages;
    for (int i = 1; i < 11; ++i)
        if (s.seeds_in_stage[i] != 0)
            stages += std::string(stages.empty() ? "" : ", ") + kStageNames[i] + "=" +
                      std::to_string(s.seeds_in_stage[i]);
    row("seeds per stage", stages.empty() ? "all dormant" : stages);
    return os.str();
}

std::string render_report(const std::filesystem::path& run_dir) {
    int malformed = 0;
    std::vector<json> metrics = read_jsonl(run_dir / "metrics.jsonl", malformed);
    std::vector<json> events = read_jsonl(run_dir / "events.jsonl", malformed);

    Series train_loss{"train loss", "#3182bd", {}}, test_loss{"test loss", "#e6550d", {}};
    Series test_acc{"test accuracy", "#31a354", {}};
    Series host_params{"host", "#636363", {}, true}, bp_params{"blueprints", "#756bb1", {}, true};
    for (const json& m : metrics) {
        double step = num(m, "step");
        if (!std::isfinite(step)) continue;
        std::string split = m.value("split", "");
        if (split == "train") {
            train_loss.points.push_back({step, num(m, "loss")});
            if (double hp = num(m, "host_params"); std::isfinite(hp)) host_params.points.push_back({step, hp});
            if (double bp = num(m, "blueprint_params"); std::isfinite(bp)) bp_params.points.push_back({step, bp});
        } else if (split == "test") {
            test_loss.points.push_back({step, num(m, "loss")});
            test_acc.points.push_back({step, num(m, "accuracy")});
        }
    }

    // Seeds per stage over time, replayed from the transitions (dormant seeds are not drawn).
    std::array<Series, 11> per_stage;
    std::array<int, 11> counts{};
    std::array<int, 11> totals{};  // transitions into each stage
    for (int s = 0; s < 11; ++s) per_stage[s] = Series{kStageNames[s], kStageColors[s], {}, true};
    replay_events(events, counts, totals, [&](double step, int from, int to) {
        for (int s = 1; s < 11; ++s)
            if (!per_stage[s].points.empty() || s == to || s == from)
                per_stage[s].points.push_back({step, static_cast<double>(counts[s])});
    });
    std::vector<Series> stage_series;
    for (int s = 1; s < 11; ++s)
        if (!per_stage[s].points.empty()) stage_series.push_back(per_stage[s]);

    std::ostringstream os;
    os << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Esper run "
       << html_escape(run_dir.filename().string()) << "</title><style>"
       << "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}"
       << "h1{font-size:20px}h2{font-size:16px;margin-top:28px}"
       << ".chart{margin:6px;border:1px solid #eee;background:#fff}.title{font-size:13px;font-weight:600}"
       << ".tick{font-size:10px;fill:#555}.legend{font-size:11px}.muted{fill:#999;font-size:12px}"
       << ".frame{fill:none;stroke:#bbb}.grid{stroke:#eee}"
       << "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 8px;"
       << "text-align:left}th{background:#f4f4f4}pre{background:#f7f7f7;padding:8px;font-size:12px}"
       << "</style></head><body>";
    os << "<h1>Esper run " << html_escape(run_dir.filename().string()) << "</h1>";
    if (!test_acc.points.empty())
        os << "<p>Final test accuracy <b>" << fmt(test_acc.points.back().y) << "</b> at step "
           << fmt(test_acc.points.back().x) << ".</p>";
    os << "<h2>Learning curves</h2>";
    os << svg_chart("Loss (train: mean of the last 50 steps)", "loss", {smooth(train_loss, 50), test_loss});
    os << svg_chart("Test accuracy", "accuracy", {test_acc});
    os << "<h2>Seeds</h2>";
    os << svg_chart("Seeds per stage (non-dormant)", "seeds", stage_series);
    std::string host_note = host_params.points.empty()
                                ? std::string()
                                : " (host: " + fmt(host_params.points.back().y) + ")";
    os << svg_chart("Blueprint parameters" + host_note, "parameters", {bp_params});
    os << "<table><tr><th>stage</th><th>transitions into</th><th>seeds now</th></tr>";
    for (int s = 0; s < 11; ++s)
        if (totals[s] != 0 || counts[s] != 0)
            os << "<tr><td>" << kStageNames[s] << "</td><td>" << totals[s] << "</td><td>"
               << (s == 0 ? std::string("—") : std::to_string(counts[s])) << "</td></tr>";
    os << "</table>";
    os << "<h2>Lifecycle events (" << events.size() << ")</h2>";
    os << "<table><tr><th>step</th><th>layer</th><th>seed</th><th>from</th><th>to</th>"
       << "<th>origin</th><th>reason</th></tr>";
    for (const json& e : events) {
        auto cell = [&](const char* k) {
            auto it = e.find(k);
            if (it == e.end()) return std::string();
            return it->is_string() ? it->get<std::string>() : it->dump();
        };
        os << "<tr><td>" << cell("step") << "</td><td>" << cell("layer") << "</td><td>"
           << cell("seed") << "</td><td>" << html_escape(cell("from")) << "</td><td>"
           << html_escape(cell("to")) << "</td><td>" << html_escape(cell("origin")) << "</td><td>"
           << html_escape(cell("reason")) << "</td></tr>";
    }
    os << "</table>";
    std::ifstream cfg(run_dir / "config.yaml");
    if (cfg) {
        std::stringstream ss;
        ss << cfg.rdbuf();
        os << "<h2>Effective configuration</h2><pre>" << html_escape(ss.str()) << "</pre>";
    }
    if (malformed > 0) os << "<p class='muted'>" << malformed << " malformed lines skipped.</p>";
    os << "</body></html>\n";
    return os.str();
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
