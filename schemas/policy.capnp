# Policy injection (`esper policy load/show/history/rollback`): what a client sends to load a
# policy and what the controller reports about one. The request/reply wrappers that carry them
# are in control.capnp.
@0xcc2f4929092f2c91;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

enum PolicyKind {
  rules @0;
  plugin @1;
  heuristic @2;
}

struct PolicyLoad {
  name @0 :Text;
  kind @1 :PolicyKind;
  union {
    source @2 :Text;
    # The policy text itself (rules YAML).
    path @3 :Text;
    # A file on the controller's host (plugin shared library).
  }
}

struct PolicyInfo {
  name @0 :Text;
  kind @1 :PolicyKind;
  version @2 :UInt32;
  loadedAtStep @3 :UInt64;
  loadedAtNs @4 :Int64;
  active @5 :Bool;
  digest @6 :Text;
}
