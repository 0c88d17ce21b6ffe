// `esper report RUN_DIR`: writes RUN_DIR/report.html from the run's metrics.jsonl and
// events.jsonl (agents/report.h) and prints the summary table, for runs not started by `esper
// run` (scripts/launch_cluster.sh, scripts/slurm/esper.sbatch, mpirun).
#include <cstdio>
#include <filesystem>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/report.h"
#include "core/error.h"

namespace esper::agents {

int report_main(int argc, char** argv) {
    cli::Parser p("esper report",
                  "Write RUN_DIR/report.html from the run's metrics and events and print its "
                  "summary.",
                  "RUN_DIR");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (p.positional().size() != 1) return p.usage_error("expected exactly one RUN_DIR");
    const std::filesystem::path dir = p.positional()[0];
    if (!std::filesystem::exists(dir / "metrics.jsonl"))
        ESPER_THROW(kInvalidInput, dir.string(),
                    ": no metrics.jsonl (not a run directory, or rank 0 wrote elsewhere)");
    const std::filesystem::path out = write_report(dir);
    std::printf("%s\n  report    %s\n", format_summary(summarize_run(dir)).c_str(), out.c_str());
    return 0;
}

}  // namespace esper::agents
