// JSON for the operator tools (`esper tap`, `esper pub`, the replies `esper ctl`/`status`/`policy`
// print), built on nlohmann-json over Cap'n Proto's dynamic reflection. Output: one line per
// message, {"schema","time","topic","type","sender","seq","sent_at_ns","run_id","correlation_id",
// "payload":{...}} ("schema": kTapSchemaVersion; "time": the sender's wall clock as ISO 8601 UTC)
// with 64-bit integers as exact JSON numbers, an unmeasured value as null (the schema's
// `*Measured` flags are not shown), Float32 as its shortest text, non-finite numbers as
// "NaN"/"Infinity"/"-Infinity", and enums by name: stages, blueprint kinds, strategies and
// origins in the vocabulary's spelling ("FINE_TUNING", "residual_mlp"), other enums in capnp's.
// Input: JSON for one payload type, checked field by field against the schema, so a misfit is
// refused with the field's path named; enums accept the vocabulary's and capnp's spellings.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "schemas/envelope.capnp.h"

namespace esper::agents {

// The version of the tool JSON line layout ("schema" on every `esper tap` line).
constexpr int kTapSchemaVersion = 1;

// The payload member names usable with `esper pub --type` ("annotation", "seedTelemetry", ...).
std::vector<std::string> payload_type_names();

// One JSON line (no trailing newline) for a decoded message.
std::string envelope_to_json(std::string_view topic, schema::Envelope::Reader envelope);

// The payload alone, as JSON ({} for Void members).
std::string payload_to_json(schema::Envelope::Reader envelope);

// Fills `payload` with `json` as payload member `type` (member name, or struct name such as
// "Annotation"). Throws esper::Error(kInvalidInput) naming the offending field, e.g.
// "annotation.txt: no such field in Annotation (fields: kind, text, step)".
void payload_from_json(std::string_view type, std::string_view json,
                       schema::Envelope::Payload::Builder payload);

}  // namespace esper::agents
