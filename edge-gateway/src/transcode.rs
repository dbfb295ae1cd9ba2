//! REST/JSON ↔ protobuf, by the HTTP rule of a route and canonical proto3 JSON:
//! lowerCamelCase out, both field names in, 64-bit integers as strings, enums as names,
//! well-known types in their JSON forms. Unknown body fields and unknown query parameters
//! are refused by name.

use aida_core::{Error, FieldViolation};
use bytes::Bytes;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

use crate::routes::{BodyRule, Route, resolve};

/// Well-known types whose JSON form is a string (so a query value fits them).
const STRING_WKTS: [&str; 3] = [
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

fn bad(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidArgument(vec![FieldViolation::new(field, message)])
}

/// The JSON value a query string value stands for in a field of `kind`.
fn query_value(field: &FieldDescriptor, raw: &str, name: &str) -> Result<Value, Error> {
    match field.kind() {
        Kind::Bool => match raw {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(bad(name, format!("'{raw}' is not true or false"))),
        },
        Kind::Message(message)
            if STRING_WKTS.contains(&message.full_name())
                || message.full_name().ends_with("Value") =>
        {
            Ok(Value::String(raw.to_owned()))
        }
        Kind::Message(_) => Err(bad(name, "a message cannot be given as a query parameter")),
        // Numbers, strings, bytes and enum names: proto3 JSON accepts them as strings.
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Sets `value` at the dotted `path` (proto names) in `object`, creating objects on the way;
/// a repeated leaf collects values in an array.
fn set_path(
    object: &mut Map<String, Value>,
    path: &str,
    value: Value,
    repeated: bool,
) -> Result<(), Error> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut current = object;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        current = entry
            .as_object_mut()
            .ok_or_else(|| bad(path, "conflicts with another parameter"))?;
    }
    if repeated {
        match current
            .entry(last.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(values) => values.push(value),
            _ => return Err(bad(path, "conflicts with another parameter")),
        }
    } else {
        current.insert(last.to_owned(), value);
    }
    Ok(())
}

/// The value at a dotted path of `object`, trying proto and JSON names.
fn get_path<'a>(
    object: &'a Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
) -> Option<&'a Value> {
    let mut current = object;
    let mut descriptor = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = descriptor.get_field_by_name(part)?;
        let value = current
            .get(field.name())
            .or_else(|| current.get(field.json_name()))?;
        if parts.peek().is_none() {
            return Some(value);
        }
        current = value.as_object()?;
        descriptor = field.kind().as_message()?.clone();
    }
    None
}

/// Which top-level field a query parameter or body entry belongs to.
fn top_level(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// Turns an error of the JSON decoder into a violation naming the offending field.
fn decode_error(error: serde_json::Error, context: &str) -> Error {
    let text = error.to_string();
    for (marker, close) in [
        ("unrecognized field name '", '\''),
        ("unknown field `", '`'),
    ] {
        if let Some(start) = text.find(marker) {
            let rest = &text[start + marker.len()..];
            if let Some(end) = rest.find(close) {
                let field = &rest[..end];
                return bad(
                    format!("{context}{field}"),
                    format!("unknown field '{field}'"),
                );
            }
        }
    }
    bad(
        if context.is_empty() {
            "body"
        } else {
            context.trim_end_matches('.')
        },
        text,
    )
}

/// The encoded request message of `route`, from the path bindings, the query string and
/// the body.
pub fn request_message(
    route: &Route,
    bindings: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, Error> {
    let input = route.method.input();
    let mut object = Map::new();
    let body_field: Option<&str> = match &route.body {
        BodyRule::None => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                return Err(bad("body", "this method takes no request body"));
            }
            None
        }
        BodyRule::All | BodyRule::Field(_) if body.iter().all(u8::is_ascii_whitespace) => None,
        BodyRule::All => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|error| bad("body", format!("not JSON: {error}")))?;
            match value {
                Value::Object(map) => object = map,
                _ => return Err(bad("body", "must be a JSON object")),
            }
            None
        }
        BodyRule::Field(field) => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|error| bad("body", format!("not JSON: {error}")))?;
            object.insert(field.clone(), value);
            Some(field.as_str())
        }
    };

    let bound: Vec<&str> = bindings.iter().map(|(path, _)| path.as_str()).collect();
    if let Some(query) = query.filter(|query| !query.is_empty()) {
        for (key, raw) in form_urlencoded::parse(query.as_bytes()) {
            if route.body == BodyRule::All {
                return Err(bad(
                    key.as_ref(),
                    "this method takes every field in the body, not in the query string",
                ));
            }
            let field = resolve(&input, &key)
                .ok_or_else(|| bad(key.as_ref(), format!("unknown query parameter '{key}'")))?;
            if field.is_map() {
                return Err(bad(
                    key.as_ref(),
                    "a map cannot be given as a query parameter",
                ));
            }
            let proto_path = proto_path(&input, &key)
                .ok_or_else(|| bad(key.as_ref(), "unknown query parameter"))?;
            if bound.contains(&proto_path.as_str()) {
                return Err(bad(key.as_ref(), "is given by the path"));
            }
            if body_field.is_some_and(|field| field == top_level(&proto_path)) {
                return Err(bad(key.as_ref(), "is given by the body"));
            }
            let value = query_value(&field, &raw, &key)?;
            set_path(&mut object, &proto_path, value, field.is_list())?;
        }
    }

    for (path, value) in bindings {
        let field = resolve(&input, path).ok_or_else(|| bad(path, "unknown path field"))?;
        if let Some(existing) = get_path(&object, &input, path)
            && existing.as_str() != Some(value.as_str())
            && !(existing.is_string() && existing.as_str().unwrap_or_default().is_empty())
        {
            return Err(bad(path, "the path and the body give different values"));
        }
        let json = match field.kind() {
            Kind::Bool => query_value(&field, value, path)?,
            _ => Value::String(value.clone()),
        };
        set_path(&mut object, path, json, false)?;
    }

    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let context = body_field
        .map(|field| format!("{field}."))
        .unwrap_or_default();
    let message = DynamicMessage::deserialize_with_options(input, Value::Object(object), &options)
        .map_err(|error| decode_error(error, &context))?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// The proto-name dotted path of a (possibly JSON-named) dotted path.
fn proto_path(message: &MessageDescriptor, path: &str) -> Option<String> {
    let mut names = Vec::new();
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))?;
        names.push(field.name().to_owned());
        if parts.peek().is_some() {
            current = field.kind().as_message()?.clone();
        }
    }
    Some(names.join("."))
}

/// Canonical JSON of a message: lowerCamelCase names, defaults printed.
pub fn message_json(message: &DynamicMessage) -> Result<Value, Error> {
    let options = SerializeOptions::new().skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|error| Error::internal(format!("response to JSON: {error}")))
}

/// The JSON body of a response of `route` from its encoded message, serialized straight
/// into bytes when the whole message is the body.
pub fn response_json(route: &Route, bytes: &[u8]) -> Result<Bytes, Error> {
    let message = DynamicMessage::decode(route.method.output(), bytes)
        .map_err(|error| Error::internal(format!("response decode: {error}")))?;
    let to_json = |error: serde_json::Error| Error::internal(format!("response to JSON: {error}"));
    match &route.response_body {
        None => {
            let mut body = Vec::with_capacity(bytes.len() * 2);
            let options = SerializeOptions::new().skip_default_fields(false);
            message
                .serialize_with_options(&mut serde_json::Serializer::new(&mut body), &options)
                .map_err(to_json)?;
            Ok(Bytes::from(body))
        }
        Some(field) => {
            let descriptor = route
                .method
                .output()
                .get_field_by_name(field)
                .ok_or_else(|| Error::internal("response_body names no field"))?;
            let json = message_json(&message)?;
            let part = json.get(descriptor.json_name()).unwrap_or(&Value::Null);
            serde_json::to_vec(part).map(Bytes::from).map_err(to_json)
        }
    }
}

/// The `google.rpc.Status` JSON of a gRPC status, details rendered through `pool`.
pub fn status_json(pool: &prost_reflect::DescriptorPool, status: &tonic::Status) -> Value {
    let rendered = pool
        .get_message_by_name("google.rpc.Status")
        .and_then(|descriptor| {
            if status.details().is_empty() {
                return None;
            }
            let message = DynamicMessage::decode(descriptor, status.details()).ok()?;
            message_json(&message).ok()
        });
    let mut body = rendered.unwrap_or_else(|| serde_json::json!({ "details": [] }));
    if let Value::Object(object) = &mut body {
        object.insert("code".into(), Value::from(status.code() as i32));
        object.insert("message".into(), Value::String(status.message().to_owned()));
        object
            .entry("details")
            .or_insert_with(|| Value::Array(Vec::new()));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;
    use http::Method;
    use prost_reflect::DescriptorPool;

    /// A test contract exercising every mapping rule, compiled at test time.
    const TEST_PROTO: &str = r#"
syntax = "proto3";
package test.v1;
import "google/api/annotations.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/field_mask.proto";
service Files {
  rpc GetFile(GetFileRequest) returns (File) {
    option (google.api.http) = {
      get: "/v1/{name=tenants/*/files/*}"
      additional_bindings { get: "/v1/files/{name}" }
    };
  }
  rpc ReadPath(ReadPathRequest) returns (File) { option (google.api.http) = { get: "/v1/paths/{path=**}" }; }
  rpc UpdateFile(UpdateFileRequest) returns (File) {
    option (google.api.http) = { patch: "/v1/files/{file.name}" body: "file" };
  }
  rpc Archive(ArchiveRequest) returns (ArchiveResponse) {
    option (google.api.http) = { post: "/v1/files/{name}:archive" body: "*" response_body: "file" };
  }
  rpc Search(SearchRequest) returns (File) { option (google.api.http) = { get: "/v1/search" }; }
}
message File { string name = 1; int64 size_bytes = 2; Kind kind = 3; google.protobuf.Timestamp modify_time = 4; map<string, string> labels = 5; }
enum Kind { KIND_UNSPECIFIED = 0; KIND_TEXT = 1; KIND_IMAGE = 2; }
message GetFileRequest { string name = 1; }
message ReadPathRequest { string path = 1; }
message UpdateFileRequest { File file = 1; google.protobuf.FieldMask update_mask = 2; bool validate_only = 3; }
message ArchiveRequest { string name = 1; string reason = 2; }
message ArchiveResponse { File file = 1; string note = 2; }
message Page { int32 size = 1; string token = 2; }
message SearchRequest { string query = 1; repeated string tags = 2; Page page = 3; Kind kind = 4; int64 min_size = 5; google.protobuf.Timestamp since = 6; bool exact = 7; }
"#;

    fn pool() -> DescriptorPool {
        let dir = tempfile_dir();
        std::fs::write(dir.join("test.proto"), TEST_PROTO).expect("write");
        let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
        let mut compiler =
            protox::Compiler::new([dir.as_path(), proto_root.as_path()]).expect("compiler");
        compiler.include_imports(true);
        compiler.open_file("test.proto").expect("compile");
        let pool =
            DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("pool");
        let _ = std::fs::remove_dir_all(&dir);
        pool
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("aida-edge-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn decode(pool: &DescriptorPool, name: &str, bytes: &[u8]) -> Value {
        let message = DynamicMessage::decode(pool.get_message_by_name(name).expect("type"), bytes)
            .expect("decode");
        message_json(&message).expect("json")
    }

    fn call(
        table: &RouteTable,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: &str,
    ) -> Result<(String, Bytes), Error> {
        let (route, bindings) = table
            .find(&method, path)
            .ok_or_else(|| bad("path", "no route"))?;
        let bytes = request_message(route, &bindings, query, body.as_bytes())?;
        Ok((route.method.input().full_name().to_owned(), bytes))
    }

    fn violation(error: Error) -> String {
        match error {
            Error::InvalidArgument(violations) => violations[0].field.clone(),
            other => panic!("not invalid argument: {other}"),
        }
    }

    #[test]
    fn resource_names_additional_bindings_and_double_star_paths_bind() {
        let pool = pool();
        let table = RouteTable::from_pool(&pool, "test.").expect("routes");
        let (name, bytes) =
            call(&table, Method::GET, "/v1/tenants/acme/files/7", None, "").expect("primary");
        assert_eq!(decode(&pool, &name, &bytes)["name"], "tenants/acme/files/7");
        let (name, bytes) =
            call(&table, Method::GET, "/v1/files/a%20b", None, "").expect("additional binding");
        assert_eq!(decode(&pool, &name, &bytes)["name"], "a b");
        let (name, bytes) = call(
            &table,
            Method::GET,
            "/v1/paths/docs/2026/report%2Fv2.pdf",
            None,
            "",
        )
        .expect("**");
        assert_eq!(
            decode(&pool, &name, &bytes)["path"],
            "docs/2026/report%2Fv2.pdf"
        );
    }

    #[test]
    fn a_body_field_and_the_query_string_fill_the_rest() {
        let pool = pool();
        let table = RouteTable::from_pool(&pool, "test.").expect("routes");
        let (name, bytes) = call(
            &table,
            Method::PATCH,
            "/v1/files/f1",
            Some("updateMask=sizeBytes,kind&validate_only=true"),
            r#"{"sizeBytes": "9007199254740993", "kind": "KIND_IMAGE", "modify_time": "2026-01-02T03:04:05Z"}"#,
        )
        .expect("update");
        let json = decode(&pool, &name, &bytes);
        assert_eq!(json["file"]["name"], "f1");
        assert_eq!(
            json["file"]["sizeBytes"], "9007199254740993",
            "64-bit integers stay exact, as strings"
        );
        assert_eq!(json["file"]["kind"], "KIND_IMAGE");
        assert_eq!(json["file"]["modifyTime"], "2026-01-02T03:04:05Z");
        assert_eq!(json["updateMask"], "sizeBytes,kind");
        assert_eq!(json["validateOnly"], true);
    }

    #[test]
    fn dotted_repeated_enum_and_timestamp_query_parameters_bind() {
        let pool = pool();
        let table = RouteTable::from_pool(&pool, "test.").expect("routes");
        let (name, bytes) = call(
            &table,
            Method::GET,
            "/v1/search",
            Some("query=a+b&tags=x&tags=y&page.size=10&page.token=t&kind=KIND_TEXT&minSize=5&since=2026-01-01T00:00:00Z&exact=1"),
            "",
        )
        .expect("search");
        let json = decode(&pool, &name, &bytes);
        assert_eq!(json["query"], "a b");
        assert_eq!(json["tags"], serde_json::json!(["x", "y"]));
        assert_eq!(json["page"]["size"], 10);
        assert_eq!(json["kind"], "KIND_TEXT");
        assert_eq!(json["minSize"], "5");
        assert_eq!(json["since"], "2026-01-01T00:00:00Z");
        assert_eq!(json["exact"], true);
    }

    #[test]
    fn a_star_body_takes_every_field_and_the_response_body_is_one_field() {
        let pool = pool();
        let table = RouteTable::from_pool(&pool, "test.").expect("routes");
        let (route, bindings) = table
            .find(&Method::POST, "/v1/files/f9:archive")
            .expect("custom verb");
        let bytes =
            request_message(route, &bindings, None, br#"{"reason": "old"}"#).expect("archive");
        let json = decode(&pool, "test.v1.ArchiveRequest", &bytes);
        assert_eq!(
            (json["name"].as_str(), json["reason"].as_str()),
            (Some("f9"), Some("old"))
        );
        let response = DynamicMessage::deserialize(
            route.method.output(),
            serde_json::json!({"file": {"name": "f9"}, "note": "hidden"}),
        )
        .expect("response");
        let body: Value =
            serde_json::from_slice(&response_json(route, &response.encode_to_vec()).expect("json"))
                .expect("valid JSON");
        assert_eq!(body["name"], "f9");
        assert!(body.get("note").is_none());
    }

    #[test]
    fn unknown_fields_unknown_parameters_and_conflicts_are_named() {
        let pool = pool();
        let table = RouteTable::from_pool(&pool, "test.").expect("routes");
        assert_eq!(
            violation(
                call(&table, Method::GET, "/v1/search", Some("colour=red"), "")
                    .expect_err("unknown param")
            ),
            "colour"
        );
        assert_eq!(
            violation(
                call(
                    &table,
                    Method::PATCH,
                    "/v1/files/f1",
                    None,
                    r#"{"bogus": 1}"#
                )
                .expect_err("unknown field")
            ),
            "file.bogus"
        );
        assert_eq!(
            violation(
                call(
                    &table,
                    Method::PATCH,
                    "/v1/files/f1",
                    None,
                    r#"{"name": "other"}"#
                )
                .expect_err("conflict")
            ),
            "file.name"
        );
        assert_eq!(
            violation(
                call(&table, Method::GET, "/v1/files/f1", None, "{}").expect_err("body on GET")
            ),
            "body"
        );
        assert_eq!(
            violation(
                call(
                    &table,
                    Method::POST,
                    "/v1/files/f1:archive",
                    Some("reason=x"),
                    "{}"
                )
                .expect_err("query with *")
            ),
            "reason"
        );
        assert_eq!(
            violation(
                call(&table, Method::GET, "/v1/search", Some("exact=maybe"), "").expect_err("bool")
            ),
            "exact"
        );
        assert_eq!(
            violation(
                call(&table, Method::PATCH, "/v1/files/f1", None, "{not json").expect_err("json")
            ),
            "body"
        );
        assert_eq!(
            violation(
                call(
                    &table,
                    Method::GET,
                    "/v1/search",
                    Some("kind=KIND_SOUND"),
                    ""
                )
                .expect_err("enum")
            ),
            "body"
        );
    }

    #[test]
    fn status_details_render_as_google_rpc_status_json() {
        let pool = DescriptorPool::decode(aida_proto::FILE_DESCRIPTOR_SET).expect("pool");
        let status: tonic::Status = Error::invalid("lead.email", "not an e-mail address").into();
        let json = status_json(&pool, &status);
        assert_eq!(json["code"], 3);
        let details = json["details"].as_array().expect("details");
        let bad_request = details
            .iter()
            .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .expect("bad request detail");
        assert_eq!(bad_request["fieldViolations"][0]["field"], "lead.email");
    }
}
