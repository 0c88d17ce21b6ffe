// The `esper` subcommands. Each lives in agents/<name>_main.cpp (or <name>_cmd.cpp) and has the
// signature `int NAME_main(int argc, char** argv)` where argv[0] is "esper NAME". To add one:
// declare it here and add a row to kCommands in agents/main.cpp.
#pragma once

namespace esper::agents {

int version_main(int argc, char** argv);

}  // namespace esper::agents
