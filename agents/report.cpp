// The run report and summary (agents/report.h). Stage names are the vocabulary's
// (kernels/vocabulary.h), as in events.jsonl; numbers go through {fmt}.
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

namespace esper::agents {

namespace {

using nlohmann::json;

constexpr std::array<const char*, kNumSeedStages> kStageColors = {
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

// A number for a tick, a table or a sentence: 4 significant digits, 2 for very large or small.
std::string label(double v) {
    const double a = std::fabs(v);
    return a != 0 && (a >= 1e5 || a < 1e-3) ? fmt::format("{:.2g}", v) : fmt::format("{:.4g}", v);
}

// A line chart with axes, ticks and a legend, as an inline <svg>. Coordinates are printed with
// 6 significant digits ({:g}).
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
    std::string out;
    auto os = std::back_inserter(out);
    fmt::format_to(os,
                   "<svg xmlns='http://www.w3.org/2000/svg' width='{:g}' height='{:g}' "
                   "class='chart'><text x='{:g}' y='18' class='title'>{}</text>",
                   kW, kH, kL, html_escape(title));
    if (!(x0 <= x1)) {
        fmt::format_to(os, "<text x='{:g}' y='{:g}' class='muted'>no data</text></svg>", kL,
                       kH / 2);
        return out;
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + 1;
    double pad = (y1 - y0) * 0.05;
    y0 -= pad, y1 += pad;
    auto sx = [&](double x) { return kL + (x - x0) / (x1 - x0) * (kW - kL - kR); };
    auto sy = [&](double y) { return kT + (1 - (y - y0) / (y1 - y0)) * (kH - kT - kB); };
    fmt::format_to(os, "<rect x='{:g}' y='{:g}' width='{:g}' height='{:g}' class='frame'/>", kL, kT,
                   kW - kL - kR, kH - kT - kB);
    for (int i = 0; i <= 4; ++i) {
        double y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
        fmt::format_to(os,
                       "<line x1='{:g}' x2='{:g}' y1='{:g}' y2='{:g}' class='grid'/><text x='{:g}' "
                       "y='{:g}' class='tick' text-anchor='end'>{}</text>",
                       kL, kW - kR, sy(y), sy(y), kL - 4, sy(y) + 4, label(y));
        fmt::format_to(os, "<text x='{:g}' y='{:g}' class='tick' text-anchor='middle'>{}</text>",
                       sx(x), kH - kB + 16, label(std::round(x)));
    }
    fmt::format_to(os, "<text x='{:g}' y='{:g}' class='tick' text-anchor='middle'>step</text>",
                   (kL + kW - kR) / 2, kH - 4);
    const double mid = (kT + kH - kB) / 2;
    fmt::format_to(os,
                   "<text x='12' y='{:g}' class='tick' text-anchor='middle' "
                   "transform='rotate(-90 12 {:g})'>{}</text>",
                   mid, mid, html_escape(ylabel));
    double lx = kL + 8;
    for (const Series& s : series) {
        if (s.points.empty()) continue;
        fmt::format_to(os, "<polyline fill='none' stroke='{}' stroke-width='1.6' points='",
                       s.color);
        double prev_y = NAN;
        for (const Point& p : s.points) {
            if (!std::isfinite(p.y)) continue;
            if (s.steps && std::isfinite(prev_y))
                fmt::format_to(os, "{:g},{:g} ", sx(p.x), sy(prev_y));
            fmt::format_to(os, "{:g},{:g} ", sx(p.x), sy(p.y));
            prev_y = p.y;
        }
        out += "'/>";
        fmt::format_to(os,
                       "<rect x='{:g}' y='{:g}' width='10' height='10' fill='{}'/><text x='{:g}' "
                       "y='{:g}' class='legend'>{}</text>",
                       lx, kT + 6, s.color, lx + 14, kT + 15, html_escape(s.name));
        lx += 22 + 7.0 * static_cast<double>(s.name.size());
    }
    out += "</svg>";
    return out;
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
        if (i >= window && std::isfinite(in.points[i - window].y))
            sum -= in.points[i - window].y, --n;
        out.points[i].y = n > 0 ? sum / static_cast<double>(n) : NAN;
    }
    return out;
}

// Replays lifecycle events: seeds start DORMANT; counts of non-dormant seeds per stage after
// each event go to `on_event(step, counts, from, to)`.
template <typename F>
void replay_events(const std::vector<json>& events, std::array<int, kNumSeedStages>& counts,
                   std::array<int, kNumSeedStages>& totals, F&& on_event) {
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
        if (std::isfinite(step))
            s.last_step = std::max<int64_t>(s.last_step, static_cast<int64_t>(step));
        std::string split = m.value("split", "");
        if (split == "test") {
            s.test_accuracy = num(m, "accuracy");
            s.test_loss = num(m, "loss");
        } else if (split == "train") {
            s.train_loss = num(m, "loss");
            if (double hp = num(m, "host_params"); std::isfinite(hp))
                s.host_params = static_cast<int64_t>(hp);
            if (double bp = num(m, "blueprint_params"); std::isfinite(bp))
                s.blueprint_params = static_cast<int64_t>(bp);
        }
    }
    replay_events(events, s.seeds_in_stage, s.transitions_into, [](double, int, int) {});
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
    row("steps", s.last_step >= 0 ? fmt::format("{}", s.last_step) : "-");
    row("test accuracy", opt(s.test_accuracy));
    row("test loss", opt(s.test_loss));
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

    Series train_loss{"train loss", "#3182bd", {}}, test_loss{"test loss", "#e6550d", {}};
    Series test_acc{"test accuracy", "#31a354", {}};
    Series host_params{"host", "#636363", {}, true}, bp_params{"blueprints", "#756bb1", {}, true};
    for (const json& m : metrics) {
        double step = num(m, "step");
        if (!std::isfinite(step)) continue;
        std::string split = m.value("split", "");
        if (split == "train") {
            train_loss.points.push_back({step, num(m, "loss")});
            if (double hp = num(m, "host_params"); std::isfinite(hp))
                host_params.points.push_back({step, hp});
            if (double bp = num(m, "blueprint_params"); std::isfinite(bp))
                bp_params.points.push_back({step, bp});
        } else if (split == "test") {
            test_loss.points.push_back({step, num(m, "loss")});
            test_acc.points.push_back({step, num(m, "accuracy")});
        }
    }

    // Seeds per stage over time, replayed from the transitions (dormant seeds are not drawn).
    std::array<Series, kNumSeedStages> per_stage;
    std::array<int, kNumSeedStages> counts{};
    std::array<int, kNumSeedStages> totals{};  // transitions into each stage
    for (int s = 0; s < kNumSeedStages; ++s)
        per_stage[s] = Series{stage_label(s), kStageColors[s], {}, true};
    replay_events(events, counts, totals, [&](double step, int from, int to) {
        for (int s = 1; s < kNumSeedStages; ++s)
            if (!per_stage[s].points.empty() || s == to || s == from)
                per_stage[s].points.push_back({step, static_cast<double>(counts[s])});
    });
    std::vector<Series> stage_series;
    for (int s = 1; s < kNumSeedStages; ++s)
        if (!per_stage[s].points.empty()) stage_series.push_back(per_stage[s]);

    std::string out;
    auto os = std::back_inserter(out);
    const std::string run_name = html_escape(run_dir.filename().string());
    fmt::format_to(
        os,
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Esper run {}</title>"
        "<style>"
        "body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}}"
        "h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}"
        ".chart{{margin:6px;border:1px solid #eee;background:#fff}}"
        ".title{{font-size:13px;font-weight:600}}"
        ".tick{{font-size:10px;fill:#555}}.legend{{font-size:11px}}"
        ".muted{{fill:#999;font-size:12px}}"
        ".frame{{fill:none;stroke:#bbb}}.grid{{stroke:#eee}}"
        "table{{border-collapse:collapse;font-size:12px}}"
        "td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left}}"
        "th{{background:#f4f4f4}}pre{{background:#f7f7f7;padding:8px;font-size:12px}}"
        "</style></head><body><h1>Esper run {}</h1>",
        run_name, run_name);
    if (!test_acc.points.empty())
        fmt::format_to(os, "<p>Final test accuracy <b>{}</b> at step {}.</p>",
                       label(test_acc.points.back().y), label(test_acc.points.back().x));
    out += "<h2>Learning curves</h2>";
    out += svg_chart("Loss (train: mean of the last 50 steps)", "loss",
                     {smooth(train_loss, 50), test_loss});
    out += svg_chart("Test accuracy", "accuracy", {test_acc});
    out += "<h2>Seeds</h2>";
    out += svg_chart("Seeds per stage (non-dormant)", "seeds", stage_series);
    const std::string host_note =
        host_params.points.empty() ? std::string()
                                   : fmt::format(" (host: {})", label(host_params.points.back().y));
    out += svg_chart("Blueprint parameters" + host_note, "parameters", {bp_params});
    out += "<table><tr><th>stage</th><th>transitions into</th><th>seeds now</th></tr>";
    for (int s = 0; s < kNumSeedStages; ++s)
        if (totals[s] != 0 || counts[s] != 0)
            fmt::format_to(os, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", stage_label(s),
                           totals[s], s == 0 ? std::string("—") : fmt::format("{}", counts[s]));
    out += "</table>";
    fmt::format_to(os, "<h2>Lifecycle events ({})</h2>", events.size());
    out +=
        "<table><tr><th>step</th><th>layer</th><th>seed</th><th>from</th><th>to</th>"
        "<th>origin</th><th>reason</th></tr>";
    for (const json& e : events) {
        auto cell = [&](const char* k) {
            auto it = e.find(k);
            if (it == e.end()) return std::string();
            return html_escape(it->is_string() ? it->get<std::string>() : it->dump());
        };
        // Stages in the vocabulary's spelling whatever the line used (older files, numbers).
        auto stage_cell = [&](const char* k) {
            const int i = stage_index(e.value(k, json()));
            return i >= 0 ? stage_label(i) : cell(k);
        };
        fmt::format_to(os,
                       "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                       "<td>{}</td></tr>",
                       cell("step"), cell("layer"), cell("seed"), stage_cell("from"),
                       stage_cell("to"), cell("origin"), cell("reason"));
    }
    out += "</table>";
    std::ifstream cfg(run_dir / "config.yaml");
    if (cfg) {
        std::stringstream ss;
        ss << cfg.rdbuf();
        fmt::format_to(os, "<h2>Effective configuration</h2><pre>{}</pre>", html_escape(ss.str()));
    }
    if (malformed > 0)
        fmt::format_to(os, "<p class='muted'>{} malformed lines skipped.</p>", malformed);
    out += "</body></html>\n";
    return out;
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
