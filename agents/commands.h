// The `esper` subcommands. Each lives in agents/<name>_main.cpp (or <name>_cmd.cpp) and has the
// signature `int NAME_main(int argc, char** argv)` where argv[0] is "esper NAME". To add one:
// declare it here and add a row to kCommands in agents/main.cpp.
#pragma once

namespace esper::agents {

int version_main(int argc, char** argv);
int kasmina_main(int argc, char** argv);
int broker_main(int argc, char** argv);
int tap_main(int argc, char** argv);
int pub_main(int argc, char** argv);
int tamiyo_main(int argc, char** argv);
int run_main(int argc, char** argv);
int policy_main(int argc, char** argv);
int ctl_main(int argc, char** argv);
int status_main(int argc, char** argv);
int keygen_main(int argc, char** argv);
int dash_main(int argc, char** argv);
int generate_main(int argc, char** argv);
int report_main(int argc, char** argv);

}  // namespace esper::agents
