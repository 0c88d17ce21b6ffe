# The effective run configuration as it travels on the bus (published at start by each agent).
# The YAML text is authoritative; the key fields are duplicated for consumers that only route.
@0xe7a805a70f353940;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

struct RunConfig {
  runId @0 :Text;
  yaml @1 :Text;
  # The effective config, as saved to runs/<id>/config.yaml.
  sourcePath @2 :Text;
  backend @3 :Text;
  seed @4 :UInt64;
  steps @5 :UInt64;
  batchSize @6 :UInt32;
  worldSize @7 :UInt32;
  telemetryIntervalSteps @8 :UInt32;
  layers @9 :List(Layer);

  struct Layer {
    width @0 :UInt32;
    seeds @1 :UInt32;
  }
}
