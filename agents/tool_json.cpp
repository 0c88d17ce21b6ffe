// Tool JSON (agents/tool_json.h): capnp's dynamic reflection walked into nlohmann::ordered_json
// (fields in schema code order; a union shows its active member only; pointer fields only when
// set, as capnp's own JSON codec does), and JSON walked back into a DynamicStruct::Builder with
// every field checked first. No escaping or number printing here: nlohmann-json does both.
#include "agents/tool_json.h"

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <kj/exception.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>

#include "bus/envelope.h"
#include "core/clock.h"
#include "core/error.h"
#include "kernels/vocabulary.h"
#include "schemas/common.capnp.h"
#include "schemas/events.capnp.h"
#include "schemas/telemetry.capnp.h"

namespace esper::agents {

namespace {

using Json = nlohmann::ordered_json;
using capnp::schema::Type;

// ---- enums: the vocabulary's spelling for its four enums, capnp's for the rest ----

std::optional<std::span<const std::string_view>> vocabulary_names(capnp::EnumSchema e) {
    const uint64_t id = e.getProto().getId();
    if (id == capnp::typeId<schema::SeedStage>()) return std::span(kSeedStageNames);
    if (id == capnp::typeId<schema::BlueprintKind>()) return std::span(kBlueprintKindNames);
    if (id == capnp::typeId<schema::GraftingStrategy>()) return std::span(kGraftingStrategyNames);
    if (id == capnp::typeId<schema::TransitionOrigin>()) return std::span(kTransitionOriginNames);
    return std::nullopt;
}

std::vector<std::string> enum_names(capnp::EnumSchema e) {
    std::vector<std::string> out;
    if (auto names = vocabulary_names(e)) {
        for (std::string_view n : *names) out.emplace_back(n);
    } else {
        for (auto en : e.getEnumerants()) out.emplace_back(en.getProto().getName().cStr());
    }
    return out;
}

Json enum_to_json(capnp::DynamicEnum v, capnp::EnumSchema schema) {
    const uint16_t raw = v.getRaw();
    if (auto names = vocabulary_names(schema); names && raw < names->size())
        return std::string((*names)[raw]);
    KJ_IF_MAYBE (en, v.getEnumerant()) {
        return en->getProto().getName().cStr();
    }
    return raw;  // a value from a newer schema: the number, not a guess
}

// ---- "not measured": a flag on the wire, null in JSON ----

// A Bool field of a struct that says whether other fields hold a measurement. In JSON the flag is
// not shown and an unmeasured value is null (never 0 next to a false flag); on input a number
// for a governed field sets its flag, null leaves it unset.
struct MeasuredFlag {
    uint64_t struct_id;
    std::string_view flag;
    std::vector<std::string_view> fields;
};

const std::vector<MeasuredFlag>& measured_flags() {
    static const std::vector<MeasuredFlag> flags = {
        {capnp::typeId<schema::SeedRecord>(),
         "activationMeasured",
         {"actMean", "actVar", "deadFraction", "health"}},
        {capnp::typeId<schema::SeedRecord>(),
         "gradientMeasured",
         {"gradNorm", "blueprintGradNorm"}},
        {capnp::typeId<schema::SeedRecord>(), "contributionMeasured", {"contribution"}},
        {capnp::typeId<schema::SeedRecord>(), "gradientHealthMeasured", {"gradientHealth"}},
        // The interval's rates are measured together with its loss.
        {capnp::typeId<schema::RunStatus>(), "lossMeasured", {"loss", "samplesPerS", "stepTimeMs"}},
        {capnp::typeId<schema::RunStatus>(), "accuracyMeasured", {"accuracy"}},
        {capnp::typeId<schema::RunStatus>(),
         "testMeasured",
         {"testStep", "testLoss", "testAccuracy"}},
        {capnp::typeId<schema::RunStatus>(), "testBitsPerByteMeasured", {"testBitsPerByte"}},
    };
    return flags;
}

// The flag governing `field` of struct `id`, if any.
const MeasuredFlag* governing_flag(uint64_t id, std::string_view field) {
    for (const MeasuredFlag& f : measured_flags())
        if (f.struct_id == id &&
            std::find(f.fields.begin(), f.fields.end(), field) != f.fields.end())
            return &f;
    return nullptr;
}

bool is_flag(uint64_t id, std::string_view field) {
    for (const MeasuredFlag& f : measured_flags())
        if (f.struct_id == id && f.flag == field) return true;
    return false;
}

// ---- capnp → JSON ----

// Non-finite floats have no JSON number; capnp's codec spells them as these strings.
Json real_to_json(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    return v;
}

// A Float32 as the double its shortest decimal text denotes, so 0.1f prints as 0.1.
Json float_to_json(float v) {
    if (!std::isfinite(v)) return real_to_json(v);
    return std::strtod(fmt::format("{}", v).c_str(), nullptr);
}

Json to_json(capnp::DynamicValue::Reader v, capnp::Type t);

Json struct_to_json(capnp::DynamicStruct::Reader s) {
    Json out = Json::object();
    auto active = s.which();
    const uint64_t id = s.getSchema().getProto().getId();
    for (auto f : s.getSchema().getFields()) {
        const std::string_view name = f.getProto().getName().cStr();
        if (is_flag(id, name)) continue;
        if (const MeasuredFlag* flag = governing_flag(id, name)) {
            const bool measured = s.get(std::string(flag->flag)).as<bool>();
            out[std::string(name)] = measured ? to_json(s.get(f), f.getType()) : Json(nullptr);
            continue;
        }
        const bool in_union =
            f.getProto().getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT;
        if (in_union) {
            KJ_IF_MAYBE (a, active) {
                if (*a != f) continue;
            } else {
                continue;
            }
        } else if (!s.has(f, capnp::HasMode::NON_NULL)) {
            continue;
        }
        out[f.getProto().getName().cStr()] = to_json(s.get(f), f.getType());
    }
    return out;
}

Json to_json(capnp::DynamicValue::Reader v, capnp::Type t) {
    switch (t.which()) {
        case Type::VOID:
            return nullptr;
        case Type::BOOL:
            return v.as<bool>();
        case Type::INT8:
        case Type::INT16:
        case Type::INT32:
        case Type::INT64:
            return v.as<int64_t>();
        case Type::UINT8:
        case Type::UINT16:
        case Type::UINT32:
        case Type::UINT64:
            return v.as<uint64_t>();
        case Type::FLOAT32:
            return float_to_json(v.as<float>());
        case Type::FLOAT64:
            return real_to_json(v.as<double>());
        case Type::TEXT: {
            auto text = v.as<capnp::Text>();
            return std::string(text.cStr(), text.size());
        }
        case Type::DATA: {
            Json bytes = Json::array();
            for (kj::byte b : v.as<capnp::Data>()) bytes.push_back(b);
            return bytes;
        }
        case Type::LIST: {
            Json items = Json::array();
            const capnp::Type element = t.asList().getElementType();
            for (auto item : v.as<capnp::DynamicList>()) items.push_back(to_json(item, element));
            return items;
        }
        case Type::ENUM:
            return enum_to_json(v.as<capnp::DynamicEnum>(), t.asEnum());
        case Type::STRUCT:
            return struct_to_json(v.as<capnp::DynamicStruct>());
        default:
            return nullptr;  // interfaces and AnyPointer: not in Esper's schemas
    }
}

// Invalid UTF-8 in a Text field (a buggy or hostile peer) is replaced, never a throw.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json payload_json(schema::Envelope::Reader envelope) {
    capnp::DynamicStruct::Reader payload = envelope.getPayload();
    KJ_IF_MAYBE (field, payload.which()) {
        const capnp::Type t = field->getType();
        if (t.which() == Type::VOID) return Json::object();
        try {
            return to_json(payload.get(*field), t);
        } catch (const kj::Exception& e) {
            // decode() validated the structure; a field can still fail capnp's lazy checks.
            return Json{{"error", e.getDescription().cStr()}};
        }
    }
    return Json::object();  // a member this build does not know (a newer sender)
}

// ---- JSON → capnp: each value checked against its type, the path named on a misfit ----

std::string type_name(capnp::Type t) {
    switch (t.which()) {
        case Type::VOID:
            return "Void";
        case Type::BOOL:
            return "Bool";
        case Type::INT8:
            return "Int8";
        case Type::INT16:
            return "Int16";
        case Type::INT32:
            return "Int32";
        case Type::INT64:
            return "Int64";
        case Type::UINT8:
            return "UInt8";
        case Type::UINT16:
            return "UInt16";
        case Type::UINT32:
            return "UInt32";
        case Type::UINT64:
            return "UInt64";
        case Type::FLOAT32:
            return "Float32";
        case Type::FLOAT64:
            return "Float64";
        case Type::TEXT:
            return "Text";
        case Type::DATA:
            return "Data";
        case Type::LIST:
            return "List(" + type_name(t.asList().getElementType()) + ")";
        case Type::ENUM:
            return t.asEnum().getUnqualifiedName().cStr();
        case Type::STRUCT:
            return t.asStruct().getUnqualifiedName().cStr();
        default:
            return "?";
    }
}

[[noreturn]] void refuse(const std::string& path, const std::string& why) {
    ESPER_THROW(kInvalidInput, path, ": ", why);
}

bool is_signed(capnp::Type t) {
    return t.which() == Type::INT8 || t.which() == Type::INT16 || t.which() == Type::INT32 ||
           t.which() == Type::INT64;
}
bool is_64bit(capnp::Type t) { return t.which() == Type::INT64 || t.which() == Type::UINT64; }

// Limits of an integer type as (min, max); the signed minimum as a negative int64.
std::pair<int64_t, uint64_t> integer_range(capnp::Type t) {
    switch (t.which()) {
        case Type::INT8:
            return {INT8_MIN, INT8_MAX};
        case Type::INT16:
            return {INT16_MIN, INT16_MAX};
        case Type::INT32:
            return {INT32_MIN, INT32_MAX};
        case Type::INT64:
            return {INT64_MIN, INT64_MAX};
        case Type::UINT8:
            return {0, UINT8_MAX};
        case Type::UINT16:
            return {0, UINT16_MAX};
        case Type::UINT32:
            return {0, UINT32_MAX};
        default:
            return {0, UINT64_MAX};
    }
}

// An integer of type t from a JSON number (exact: nlohmann keeps 64-bit integers) or, for 64-bit
// types, a string of digits (tap's output of a JS-unsafe number may be quoted by other tools).
capnp::DynamicValue::Reader integer_from_json(const std::string& path, const Json& j,
                                              capnp::Type t) {
    const std::string name = type_name(t);
    bool negative = false;
    uint64_t magnitude = 0;
    if (j.is_string() && is_64bit(t)) {
        const std::string& s = j.get_ref<const std::string&>();
        negative = !s.empty() && s[0] == '-';
        const char* first = s.data() + (negative ? 1 : 0);
        const char* last = s.data() + s.size();
        auto [end, ec] = std::from_chars(first, last, magnitude);
        if (first == last || end != last ||
            (ec != std::errc() && ec != std::errc::result_out_of_range))
            refuse(path, "expected " + name + ", got string");
        if (ec == std::errc::result_out_of_range) refuse(path, "out of range for " + name);
        if (negative && t.which() == Type::UINT64) refuse(path, "negative value for UInt64");
    } else if (j.is_number_unsigned()) {
        magnitude = j.get<uint64_t>();
    } else if (j.is_number_integer()) {
        const int64_t v = j.get<int64_t>();
        negative = v < 0;
        magnitude = negative ? uint64_t(0) - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
    } else if (j.is_number_float()) {
        const double v = j.get<double>();
        if (!std::isfinite(v) || v != std::floor(v)) refuse(path, "expected an integer " + name);
        if (std::fabs(v) > 9007199254740992.0) {
            if (is_64bit(t))
                refuse(path, "integer beyond 2^53 is not exact as a JSON number; quote it");
            refuse(path, "out of range for " + name);
        }
        negative = v < 0;
        magnitude = static_cast<uint64_t>(std::fabs(v));
    } else {
        refuse(path, "expected " + name);
    }
    const auto [lo, hi] = integer_range(t);
    if (negative) {
        if (!is_signed(t) || magnitude > uint64_t(0) - static_cast<uint64_t>(lo))
            refuse(path, "out of range for " + name);
        return static_cast<int64_t>(uint64_t(0) - magnitude);
    }
    if (magnitude > hi) refuse(path, "out of range for " + name);
    if (is_signed(t)) return static_cast<int64_t>(magnitude);
    return magnitude;
}

double real_from_json(const std::string& path, const Json& j, capnp::Type t) {
    if (j.is_number()) return j.get<double>();
    if (j.is_string()) {
        const std::string& s = j.get_ref<const std::string&>();
        if (s == "NaN") return std::nan("");
        if (s == "Infinity") return HUGE_VAL;
        if (s == "-Infinity") return -HUGE_VAL;
    }
    refuse(path, "expected a number (" + type_name(t) + ")");
}

capnp::DynamicEnum enum_from_json(const std::string& path, const Json& j, capnp::EnumSchema e) {
    const std::string name = type_name(capnp::Type(e));
    if (!j.is_string()) refuse(path, "expected a " + name + " name");
    const std::string& s = j.get_ref<const std::string&>();
    if (auto names = vocabulary_names(e)) {
        // ASCII case-insensitive, as the vocabulary's own parse_* functions.
        auto same = [&](std::string_view n) {
            return std::equal(n.begin(), n.end(), s.begin(), s.end(), [](char a, char b) {
                return std::tolower(static_cast<unsigned char>(a)) ==
                       std::tolower(static_cast<unsigned char>(b));
            });
        };
        for (size_t i = 0; i < names->size(); ++i)
            if (same((*names)[i])) return capnp::DynamicEnum(e, static_cast<uint16_t>(i));
    }
    // capnp's own spelling ("fineTuning"), accepted for compatibility.
    KJ_IF_MAYBE (en, e.findEnumerantByName(s)) {
        return capnp::DynamicEnum(*en);
    }
    refuse(path,
           fmt::format("unknown {} '{}' (one of: {})", name, s, fmt::join(enum_names(e), ", ")));
}

void fill_struct(const std::string& path, const Json& j, capnp::DynamicStruct::Builder out);
void fill_list(const std::string& path, const Json& j, capnp::DynamicList::Builder out);

// The value of a field or list element of a scalar type (Void, Bool, numbers, Text, enums) read
// from `j`; nullopt for the types the callers build in place (Data, lists, structs). A Text
// reader points into `j`, which outlives the set() it is passed to.
std::optional<capnp::DynamicValue::Reader> scalar_from_json(const std::string& path, const Json& j,
                                                            capnp::Type t) {
    switch (t.which()) {
        case Type::VOID:
            if (!j.is_null() && !(j.is_object() && j.empty())) refuse(path, "expected null (Void)");
            return capnp::DynamicValue::Reader(capnp::VOID);
        case Type::BOOL:
            if (!j.is_boolean()) refuse(path, "expected true or false");
            return capnp::DynamicValue::Reader(j.get<bool>());
        case Type::INT8:
        case Type::INT16:
        case Type::INT32:
        case Type::INT64:
        case Type::UINT8:
        case Type::UINT16:
        case Type::UINT32:
        case Type::UINT64:
            return integer_from_json(path, j, t);
        case Type::FLOAT32:
        case Type::FLOAT64:
            return capnp::DynamicValue::Reader(real_from_json(path, j, t));
        case Type::TEXT: {
            if (!j.is_string()) refuse(path, "expected a string");
            const std::string& s = j.get_ref<const std::string&>();
            return capnp::DynamicValue::Reader(capnp::Text::Reader(s.c_str(), s.size()));
        }
        case Type::ENUM:
            return capnp::DynamicValue::Reader(enum_from_json(path, j, t.asEnum()));
        default:
            return std::nullopt;
    }
}

// Sets field `f` of `out` from `j`.
void set_field(const std::string& path, const Json& j, capnp::DynamicStruct::Builder out,
               capnp::StructSchema::Field f) {
    const capnp::Type t = f.getType();
    if (const auto v = scalar_from_json(path, j, t)) {
        out.set(f, *v);
        return;
    }
    switch (t.which()) {
        case Type::DATA: {
            if (!j.is_array()) refuse(path, "expected an array of bytes");
            auto bytes = out.init(f, static_cast<unsigned>(j.size())).as<capnp::Data>();
            for (size_t i = 0; i < j.size(); ++i) {
                const Json& b = j[i];
                if (!b.is_number_integer() || b.get<int64_t>() < 0 || b.get<int64_t>() > 255)
                    refuse(fmt::format("{}[{}]", path, i), "expected a byte (0..255)");
                bytes[i] = static_cast<kj::byte>(b.get<int64_t>());
            }
            return;
        }
        case Type::LIST:
            if (!j.is_array()) refuse(path, "expected an array (" + type_name(t) + ")");
            fill_list(path, j,
                      out.init(f, static_cast<unsigned>(j.size())).as<capnp::DynamicList>());
            return;
        case Type::STRUCT:
            if (!j.is_object()) refuse(path, "expected an object (" + type_name(t) + ")");
            fill_struct(path, j, out.init(f).as<capnp::DynamicStruct>());
            return;
        default:
            refuse(path, "type " + type_name(t) + " is not supported in JSON input");
    }
}

void fill_list(const std::string& path, const Json& j, capnp::DynamicList::Builder out) {
    const capnp::Type element = out.getSchema().getElementType();
    for (unsigned i = 0; i < j.size(); ++i) {
        const std::string at = fmt::format("{}[{}]", path, i);
        const Json& v = j[i];
        if (const auto scalar = scalar_from_json(at, v, element)) {
            out.set(i, *scalar);
            continue;
        }
        switch (element.which()) {
            case Type::STRUCT:
                if (!v.is_object()) refuse(at, "expected an object (" + type_name(element) + ")");
                fill_struct(at, v, out[i].as<capnp::DynamicStruct>());
                break;
            case Type::LIST:
                if (!v.is_array()) refuse(at, "expected an array (" + type_name(element) + ")");
                fill_list(at, v,
                          out.init(i, static_cast<unsigned>(v.size())).as<capnp::DynamicList>());
                break;
            default:
                refuse(at, "type " + type_name(element) + " is not supported in JSON input");
        }
    }
}

void fill_struct(const std::string& path, const Json& j, capnp::DynamicStruct::Builder out) {
    const capnp::StructSchema s = out.getSchema();
    const uint64_t id = s.getProto().getId();
    bool union_seen = false;
    std::vector<std::string_view> measured;  // flags set by a governed value
    for (const auto& [key, value] : j.items()) {
        const std::string at = path + "." + key;
        if (const MeasuredFlag* flag = governing_flag(id, key)) {
            if (value.is_null()) continue;  // not measured: the flag stays false
            measured.push_back(flag->flag);
        }
        KJ_IF_MAYBE (field, s.findFieldByName(key)) {
            if (field->getProto().getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT) {
                if (union_seen) refuse(at, "more than one member of the same union");
                union_seen = true;
            }
            set_field(at, value, out, *field);
        } else {
            std::vector<std::string> names;
            for (auto f : s.getFields()) names.emplace_back(f.getProto().getName().cStr());
            refuse(at, fmt::format("no such field in {} (fields: {})", type_name(capnp::Type(s)),
                                   fmt::join(names, ", ")));
        }
    }
    for (std::string_view flag : measured)
        if (!j.contains(std::string(flag))) out.set(std::string(flag), true);
}

capnp::StructSchema::Field find_member(std::string_view type) {
    auto payload = capnp::Schema::from<schema::Envelope::Payload>();
    for (auto field : payload.getUnionFields()) {
        const auto t = field.getType();
        const bool struct_match = t.isStruct() && type == t.asStruct().getUnqualifiedName().cStr();
        if (type == field.getProto().getName().cStr() || struct_match) return field;
    }
    ESPER_THROW(kInvalidInput, "unknown type '", type,
                "' (one of: ", fmt::format("{}", fmt::join(payload_type_names(), ", ")), ")");
}

}  // namespace

std::vector<std::string> payload_type_names() {
    std::vector<std::string> names;
    for (auto field : capnp::Schema::from<schema::Envelope::Payload>().getUnionFields())
        names.emplace_back(field.getProto().getName().cStr());
    return names;
}

std::string payload_to_json(schema::Envelope::Reader envelope) {
    return dump(payload_json(envelope));
}

std::string envelope_to_json(std::string_view topic, schema::Envelope::Reader envelope) {
    Json line = {{"schema", kTapSchemaVersion},
                 {"time", utc_iso8601(envelope.getSentAtNs())},
                 {"topic", topic},
                 {"type", bus::payload_type_name(envelope.getPayload().which())},
                 {"sender", envelope.getSender().cStr()},
                 {"seq", envelope.getSequence()},
                 {"sent_at_ns", envelope.getSentAtNs()},
                 {"run_id", envelope.getRunId().cStr()}};
    if (envelope.getCorrelationId().size() > 0)
        line["correlation_id"] = envelope.getCorrelationId().cStr();
    line["payload"] = payload_json(envelope);
    return dump(line);
}

void payload_from_json(std::string_view type, std::string_view json,
                       schema::Envelope::Payload::Builder payload) {
    const capnp::StructSchema::Field field = find_member(type);
    const std::string name = field.getProto().getName().cStr();
    Json j;
    try {
        j = Json::parse(json);
    } catch (const Json::exception& e) {
        // Not only parse_error: a number beyond double's range ("1e99999") is out_of_range, which
        // used to escape and abort `esper pub` (found by tests/fuzz/fuzz_pub_json.cpp).
        ESPER_THROW(kInvalidInput, name, ": not valid JSON: ", e.what());
    }
    capnp::DynamicStruct::Builder dyn = payload;
    try {
        set_field(name, j, dyn, field);
    } catch (const kj::Exception& e) {
        ESPER_THROW(kInvalidInput, name, ": ", e.getDescription().cStr());
    } catch (const Json::exception& e) {
        ESPER_THROW(kInvalidInput, name, ": ", e.what());
    }
}

}  // namespace esper::agents
