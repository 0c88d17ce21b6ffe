// JSON conversion; see json.h. The emitter walks capnp's JsonValue tree together with the
// schema, so it knows which strings are 64-bit integers and which numbers are Float32.
#include "bus/json.h"

#include <capnp/compat/json.h>
#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/exception.h>

#include <charconv>
#include <cmath>
#include <cstdio>

#include "bus/envelope.h"
#include "core/error.h"

namespace esper::bus {

namespace {

using capnp::JsonValue;
using capnp::schema::Type;

const capnp::JsonCodec& codec() {
    static const capnp::JsonCodec c;  // encode/decode are const and keep no state
    return c;
}

void append_escaped(std::string& out, kj::StringPtr s) {
    out.push_back('"');
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out.push_back(ch);
                }
        }
    }
    out.push_back('"');
}

bool is_64bit(capnp::Type t) {
    return t.which() == Type::INT64 || t.which() == Type::UINT64;
}

bool all_digits(kj::StringPtr s) {
    if (s.size() == 0) return false;
    size_t i = s[0] == '-' ? 1 : 0;
    if (i == s.size()) return false;
    for (; i < s.size(); ++i)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

void append_number(std::string& out, double v, capnp::Type t) {
    char buf[64];
    std::to_chars_result r;
    if (t.which() == Type::FLOAT32)
        r = std::to_chars(buf, buf + sizeof buf, static_cast<float>(v));
    else if (t.which() != Type::FLOAT64 && v == std::floor(v) && std::fabs(v) < 9.0e15)
        r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v));
    else
        r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

void emit(std::string& out, JsonValue::Reader j, capnp::Type t) {
    switch (j.which()) {
        case JsonValue::NULL_: out += "null"; return;
        case JsonValue::BOOLEAN: out += j.getBoolean() ? "true" : "false"; return;
        case JsonValue::NUMBER: append_number(out, j.getNumber(), t); return;
        case JsonValue::STRING: {
            auto s = j.getString();
            if (is_64bit(t) && all_digits(s))
                out.append(s.cStr(), s.size());
            else
                append_escaped(out, s);
            return;
        }
        case JsonValue::ARRAY: {
            capnp::Type element = t.isList() ? t.asList().getElementType() : capnp::Type();
            out.push_back('[');
            bool first = true;
            for (auto e : j.getArray()) {
                if (!first) out.push_back(',');
                first = false;
                emit(out, e, element);
            }
            out.push_back(']');
            return;
        }
        case JsonValue::OBJECT: {
            out.push_back('{');
            bool first = true;
            for (auto f : j.getObject()) {
                if (!first) out.push_back(',');
                first = false;
                append_escaped(out, f.getName());
                out.push_back(':');
                capnp::Type ft;
                if (t.isStruct()) {
                    KJ_IF_MAYBE(field, t.asStruct().findFieldByName(f.getName())) {
                        ft = field->getType();
                    }
                }
                emit(out, f.getValue(), ft);
            }
            out.push_back('}');
            return;
        }
        case JsonValue::CALL: out += "null"; return;  // not produced for our schemas
    }
    out += "null";
}

std::string value_to_json(capnp::DynamicValue::Reader value, capnp::Type type) {
    capnp::MallocMessageBuilder scratch;
    auto root = scratch.initRoot<JsonValue>();
    codec().encode(value, type, root);
    std::string out;
    emit(out, root.asReader(), type);
    return out;
}

// ---- JSON -> payload validation ----

std::string type_name(capnp::Type t) {
    switch (t.which()) {
        case Type::VOID: return "Void";
        case Type::BOOL: return "Bool";
        case Type::INT8: return "Int8";
        case Type::INT16: return "Int16";
        case Type::INT32: return "Int32";
        case Type::INT64: return "Int64";
        case Type::UINT8: return "UInt8";
        case Type::UINT16: return "UInt16";
        case Type::UINT32: return "UInt32";
        case Type::UINT64: return "UInt64";
        case Type::FLOAT32: return "Float32";
        case Type::FLOAT64: return "Float64";
        case Type::TEXT: return "Text";
        case Type::DATA: return "Data";
        case Type::LIST: return "List(" + type_name(t.asList().getElementType()) + ")";
        case Type::ENUM: return t.asEnum().getUnqualifiedName().cStr();
        case Type::STRUCT: return t.asStruct().getUnqualifiedName().cStr();
        default: return "?";
    }
}

[[noreturn]] void refuse(const std::string& path, const std::string& why) {
    ESPER_THROW(kInvalidInput, path, ": ", why);
}

void check_integer(const std::string& path, JsonValue::Reader j, capnp::Type t) {
    double lo = 0, hi = 0;
    switch (t.which()) {
        case Type::INT8: lo = -128; hi = 127; break;
        case Type::INT16: lo = -32768; hi = 32767; break;
        case Type::INT32: lo = -2147483648.0; hi = 2147483647.0; break;
        case Type::UINT8: hi = 255; break;
        case Type::UINT16: hi = 65535; break;
        case Type::UINT32: hi = 4294967295.0; break;
        case Type::INT64: lo = -9.3e18; hi = 9.3e18; break;
        case Type::UINT64: hi = 1.85e19; break;
        default: break;
    }
    if (j.isString() && is_64bit(t)) {
        auto s = j.getString();
        if (!all_digits(s)) refuse(path, "expected " + type_name(t) + ", got string");
        if (t.which() == Type::UINT64 && s[0] == '-') refuse(path, "negative value for UInt64");
        return;
    }
    if (!j.isNumber()) refuse(path, "expected " + type_name(t));
    double v = j.getNumber();
    if (v != std::floor(v)) refuse(path, "expected an integer " + type_name(t));
    if (v < lo || v > hi) refuse(path, "out of range for " + type_name(t));
    if (is_64bit(t) && std::fabs(v) > 9007199254740992.0)
        refuse(path, "integer beyond 2^53 is not exact as a JSON number; quote it");
}

void check(const std::string& path, JsonValue::Reader j, capnp::Type t);

void check_struct(const std::string& path, JsonValue::Reader j, capnp::StructSchema s) {
    if (!j.isObject()) refuse(path, "expected an object (" + type_name(capnp::Type(s)) + ")");
    bool union_seen = false;
    for (auto f : j.getObject()) {
        std::string fpath = path + "." + f.getName().cStr();
        KJ_IF_MAYBE(field, s.findFieldByName(f.getName())) {
            if (field->getProto().getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT) {
                if (union_seen) refuse(fpath, "more than one member of the same union");
                union_seen = true;
            }
            check(fpath, f.getValue(), field->getType());
        } else {
            std::string names;
            for (auto fl : s.getFields()) {
                if (!names.empty()) names += ", ";
                names += fl.getProto().getName().cStr();
            }
            refuse(fpath, "no such field in " + type_name(capnp::Type(s)) + " (fields: " +
                              names + ")");
        }
    }
}

void check(const std::string& path, JsonValue::Reader j, capnp::Type t) {
    switch (t.which()) {
        case Type::VOID:
            if (!j.isNull() && !(j.isObject() && j.getObject().size() == 0))
                refuse(path, "expected null (Void)");
            return;
        case Type::BOOL:
            if (!j.isBoolean()) refuse(path, "expected true or false");
            return;
        case Type::INT8: case Type::INT16: case Type::INT32: case Type::INT64:
        case Type::UINT8: case Type::UINT16: case Type::UINT32: case Type::UINT64:
            check_integer(path, j, t);
            return;
        case Type::FLOAT32: case Type::FLOAT64:
            if (j.isNumber()) return;
            if (j.isString() && (j.getString() == "NaN" || j.getString() == "Infinity" ||
                                 j.getString() == "-Infinity"))
                return;
            refuse(path, "expected a number (" + type_name(t) + ")");
        case Type::TEXT:
            if (!j.isString()) refuse(path, "expected a string");
            return;
        case Type::DATA:
            if (!j.isArray()) refuse(path, "expected an array of bytes");
            return;
        case Type::LIST: {
            if (!j.isArray()) refuse(path, "expected an array (" + type_name(t) + ")");
            auto element = t.asList().getElementType();
            unsigned i = 0;
            for (auto e : j.getArray()) check(path + "[" + std::to_string(i++) + "]", e, element);
            return;
        }
        case Type::ENUM: {
            auto e = t.asEnum();
            if (j.isString()) {
                if (e.findEnumerantByName(j.getString()) != nullptr) return;
                std::string names;
                for (auto en : e.getEnumerants()) {
                    if (!names.empty()) names += ", ";
                    names += en.getProto().getName().cStr();
                }
                refuse(path, std::string("unknown ") + type_name(t) + " '" +
                                 j.getString().cStr() + "' (one of: " + names + ")");
            }
            refuse(path, "expected a " + type_name(t) + " name");
        }
        case Type::STRUCT:
            check_struct(path, j, t.asStruct());
            return;
        default:
            refuse(path, "type " + type_name(t) + " is not supported in JSON input");
    }
}

// capnp's JSON parser reads every number as a double. Integer literals longer than 15 digits
// (the 64-bit ones tap prints exactly) are quoted first, which the codec accepts for 64-bit
// fields, so `esper tap` output can be fed back to `esper pub` without losing digits.
std::string quote_long_integers(std::string_view json) {
    std::string out;
    out.reserve(json.size() + 16);
    bool in_string = false;
    for (size_t i = 0; i < json.size();) {
        char ch = json[i];
        if (in_string) {
            out.push_back(ch);
            if (ch == '\\' && i + 1 < json.size()) {
                out.push_back(json[i + 1]);
                i += 2;
                continue;
            }
            if (ch == '"') in_string = false;
            ++i;
            continue;
        }
        if (ch == '"') {
            in_string = true;
            out.push_back(ch);
            ++i;
            continue;
        }
        if (ch == '-' || (ch >= '0' && ch <= '9')) {
            size_t j = i + (ch == '-' ? 1 : 0);
            while (j < json.size() && json[j] >= '0' && json[j] <= '9') ++j;
            bool integer = j == json.size() || (json[j] != '.' && json[j] != 'e' && json[j] != 'E');
            std::string_view token = json.substr(i, j - i);
            if (integer && token.size() - (ch == '-' ? 1 : 0) > 15) {
                out.push_back('"');
                out.append(token);
                out.push_back('"');
            } else {
                out.append(token);
            }
            i = j;
            continue;
        }
        out.push_back(ch);
        ++i;
    }
    return out;
}

capnp::StructSchema::Field find_member(std::string_view type) {
    auto payload = capnp::Schema::from<schema::Envelope::Payload>();
    for (auto field : payload.getUnionFields()) {
        std::string name = field.getProto().getName().cStr();
        auto t = field.getType();
        bool struct_match = t.isStruct() && type == t.asStruct().getUnqualifiedName().cStr();
        if (type == name || struct_match) return field;
    }
    std::string names;
    for (const auto& n : payload_type_names()) names += (names.empty() ? "" : ", ") + n;
    ESPER_THROW(kInvalidInput, "unknown type '", type, "' (one of: ", names, ")");
}

}  // namespace

std::vector<std::string> payload_type_names() {
    std::vector<std::string> names;
    for (auto field : capnp::Schema::from<schema::Envelope::Payload>().getUnionFields())
        names.emplace_back(field.getProto().getName().cStr());
    return names;
}

std::string payload_to_json(schema::Envelope::Reader envelope) {
    capnp::DynamicStruct::Reader payload = envelope.getPayload();
    KJ_IF_MAYBE(field, payload.which()) {
        auto t = field->getType();
        if (t.which() == Type::VOID) return "{}";
        try {
            return value_to_json(payload.get(*field), t);
        } catch (const kj::Exception& e) {
            // decode() validated the structure; a field can still fail capnp's lazy checks.
            std::string out = "{\"error\":";
            append_escaped(out, e.getDescription());
            return out + "}";
        }
    }
    return "{}";  // a member this build does not know (a newer sender)
}

std::string envelope_to_json(std::string_view topic, schema::Envelope::Reader envelope) {
    std::string out = "{\"topic\":";
    append_escaped(out, kj::heapString(topic.data(), topic.size()));
    out += ",\"type\":";
    auto which = envelope.getPayload().which();
    std::string_view name = payload_type_name(which);
    append_escaped(out, kj::heapString(name.data(), name.size()));
    out += ",\"sender\":";
    append_escaped(out, envelope.getSender());
    out += ",\"seq\":" + std::to_string(envelope.getSequence());
    out += ",\"sent_at_ns\":" + std::to_string(envelope.getSentAtNs());
    out += ",\"run_id\":";
    append_escaped(out, envelope.getRunId());
    if (envelope.getCorrelationId().size() > 0) {
        out += ",\"correlation_id\":";
        append_escaped(out, envelope.getCorrelationId());
    }
    out += ",\"payload\":" + payload_to_json(envelope) + "}";
    return out;
}

void payload_from_json(std::string_view type, std::string_view json,
                       schema::Envelope::Payload::Builder payload) {
    auto field = find_member(type);
    std::string name = field.getProto().getName().cStr();
    capnp::MallocMessageBuilder scratch;
    auto raw = scratch.initRoot<JsonValue>();
    try {
        std::string quoted = quote_long_integers(json);
        codec().decodeRaw(kj::ArrayPtr<const char>(quoted.data(), quoted.size()), raw);
    } catch (const kj::Exception& e) {
        ESPER_THROW(kInvalidInput, name, ": not valid JSON: ", e.getDescription().cStr());
    }
    check(name, raw.asReader(), field.getType());
    capnp::DynamicStruct::Builder dyn = payload;
    try {
        if (field.getType().isStruct()) {
            auto target = dyn.init(field).as<capnp::DynamicStruct>();
            codec().decode(raw.asReader(), target);
        } else {
            dyn.set(field, capnp::VOID);
        }
    } catch (const kj::Exception& e) {
        ESPER_THROW(kInvalidInput, name, ": ", e.getDescription().cStr());
    }
}

}  // namespace esper::bus
