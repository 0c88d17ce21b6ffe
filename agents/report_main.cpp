// `esper report RUN_DIR`: (re)writes RUN_DIR/report.html and prints the run summary. `esper run`
// does this when a run ends; by hand it reports a run that is still going, one whose `esper run`
// was killed before it could, or an old run directory after an upgrade of the report.
#include <fmt/format.h>

#include <filesystem>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/report.h"

namespace esper::agents {

int report_main(int argc, char** argv) {
    cli::Parser p("esper report",
                  "Write RUN_DIR/report.html from the run directory's metrics.jsonl, events.jsonl\n"
                  "and run.json, and print the run summary.",
                  "RUN_DIR");
    auto& quiet = p.flag("quiet", "print only the report's path");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (p.positional().size() != 1) return p.usage_error("expected one RUN_DIR");
    const std::filesystem::path dir = p.positional()[0];
    if (!std::filesystem::exists(dir / "metrics.jsonl") &&
        !std::filesystem::exists(dir / "events.jsonl"))
        return p.usage_error(dir.string() + " holds no run (no metrics.jsonl or events.jsonl)");
    const std::filesystem::path out = write_report(dir);
    if (!quiet.on()) fmt::print("{}", format_summary(summarize_run(dir)));
    fmt::print("report: {}\n", out.string());
    return 0;
}

}  // namespace esper::agents
