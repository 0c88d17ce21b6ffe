// `esper version`: the version and what this build was compiled with.
#include <cstdio>

#include "agents/cli.h"
#include "agents/commands.h"

#ifndef ESPER_VERSION
#define ESPER_VERSION "0.0.0"
#endif

namespace esper::agents {

int version_main(int argc, char** argv) {
    cli::Parser p("esper version", "Print the version and build configuration.");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
#ifdef ESPER_HAVE_CUDA
    const char* cuda = "yes";
#else
    const char* cuda = "no";
#endif
    std::printf("esper %s (cuda: %s)\n", ESPER_VERSION, cuda);
    return 0;
}

}  // namespace esper::agents
