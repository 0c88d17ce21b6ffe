# The rendezvous key-value vocabulary of distributed runs (docs/distributed.md): ranks publish
# their addresses and NCCL ids under a key and read the others'. Served by the `kv` worker that
# `esper broker` hosts; the request and reply travel as the kvSet/kvGet members of
# ControlRequest and the kvValue member of ControlReply (control.capnp).
@0xb5606a68fed3c29a;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

struct KvSet @0xe932b4fca214363d {
  # Type id pinned: the struct lived in policy.capnp, and the envelope's typeId must not change.
  key @0 :Text;
  value @1 :Data;
}

struct KvValue @0xcd0e9118ed5b2f66 {
  # Type id pinned (see KvSet).
  found @0 :Bool;
  value @1 :Data;
}
