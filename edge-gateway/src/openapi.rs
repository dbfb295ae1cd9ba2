//! OpenAPI 3.1, generated from the same descriptors and routes the edge serves: paths,
//! parameters, bodies and schemas in their proto3 JSON forms, the bearer security scheme,
//! and `google.rpc.Status` as the error body.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::routes::{BodyRule, Route, RouteTable};

fn schema_name(message: &MessageDescriptor) -> String {
    message.full_name().to_owned()
}

/// The schema of a well-known type, if `message` is one.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "description": "Comma-separated field paths"})
        }
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => {
            json!({"type": ["string", "null"]})
        }
        "google.protobuf.BoolValue" => json!({"type": ["boolean", "null"]}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({"type": ["integer", "null"]})
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": ["string", "null"], "format": "int64"})
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => {
            json!({"type": ["number", "null"]})
        }
        _ => return None,
    })
}

/// The schema of one value of `kind`; referenced messages are collected in `needed`.
fn kind_schema(
    kind: &Kind,
    needed: &mut BTreeSet<String>,
    pending: &mut Vec<MessageDescriptor>,
) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(enumeration) => json!({
            "type": "string",
            "enum": enumeration.values().map(|value| value.name().to_owned()).collect::<Vec<_>>()
        }),
        Kind::Message(message) => {
            if let Some(schema) = well_known(message) {
                return schema;
            }
            if needed.insert(schema_name(message)) {
                pending.push(message.clone());
            }
            json!({"$ref": format!("#/components/schemas/{}", schema_name(message))})
        }
    }
}

fn field_schema(
    field: &FieldDescriptor,
    needed: &mut BTreeSet<String>,
    pending: &mut Vec<MessageDescriptor>,
) -> Value {
    if field.is_map() {
        let entry = field.kind();
        let value = entry
            .as_message()
            .and_then(|entry| entry.get_field_by_name("value"));
        let value_schema = value
            .map(|value| kind_schema(&value.kind(), needed, pending))
            .unwrap_or(json!({}));
        return json!({"type": "object", "additionalProperties": value_schema});
    }
    let schema = kind_schema(&field.kind(), needed, pending);
    if field.is_list() {
        json!({"type": "array", "items": schema})
    } else {
        schema
    }
}

fn message_schema(
    message: &MessageDescriptor,
    needed: &mut BTreeSet<String>,
    pending: &mut Vec<MessageDescriptor>,
) -> Value {
    let mut properties = serde_json::Map::new();
    for field in message.fields() {
        properties.insert(
            field.json_name().to_owned(),
            field_schema(&field, needed, pending),
        );
    }
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// Query parameters of a route: scalar fields not bound by the path or the body, and the
/// scalar fields of singular message fields, dotted.
fn query_parameters(
    route: &Route,
    needed: &mut BTreeSet<String>,
    pending: &mut Vec<MessageDescriptor>,
) -> Vec<Value> {
    if route.body == BodyRule::All {
        return Vec::new();
    }
    let bound: Vec<&str> = route.template.field_paths().collect();
    let body_field = match &route.body {
        BodyRule::Field(field) => Some(field.as_str()),
        _ => None,
    };
    let mut parameters = Vec::new();
    for field in route.method.input().fields() {
        if bound.contains(&field.name()) || body_field == Some(field.name()) || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::Message(message) if well_known(&message).is_none() => {
                if field.is_list() {
                    continue;
                }
                for inner in message.fields() {
                    let path = format!("{}.{}", field.name(), inner.name());
                    if bound.contains(&path.as_str()) || inner.is_map() || matches!(inner.kind(), Kind::Message(ref m) if well_known(m).is_none()) {
                        continue;
                    }
                    parameters.push(json!({"name": format!("{}.{}", field.json_name(), inner.json_name()), "in": "query", "schema": field_schema(&inner, needed, pending)}));
                }
            }
            _ => parameters.push(json!({"name": field.json_name(), "in": "query", "schema": field_schema(&field, needed, pending)})),
        }
    }
    parameters
}

/// The OpenAPI 3.1 document of `table`.
pub fn document(table: &RouteTable, title: &str, version: &str) -> Value {
    let mut needed = BTreeSet::new();
    let mut pending = Vec::new();
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut operation_ids = BTreeSet::new();
    for route in table.routes() {
        let input = route.method.input();
        let mut parameters: Vec<Value> = route
            .template
            .field_paths()
            .map(|path| {
                let schema = crate::routes::resolve(&input, path)
                    .map(|field| field_schema(&field, &mut needed, &mut pending))
                    .unwrap_or(json!({"type": "string"}));
                json!({"name": path, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        parameters.extend(query_parameters(route, &mut needed, &mut pending));
        let request_body = match &route.body {
            BodyRule::None => None,
            BodyRule::All => Some(kind_schema(
                &Kind::Message(input.clone()),
                &mut needed,
                &mut pending,
            )),
            BodyRule::Field(field) => input
                .get_field_by_name(field)
                .map(|field| field_schema(&field, &mut needed, &mut pending)),
        };
        let output = route.method.output();
        let response_schema = match &route.response_body {
            Some(field) => output
                .get_field_by_name(field)
                .map(|field| field_schema(&field, &mut needed, &mut pending))
                .unwrap_or(json!({})),
            None => kind_schema(&Kind::Message(output.clone()), &mut needed, &mut pending),
        };
        let content = if route.server_streaming() {
            json!({
                "application/x-ndjson": {"schema": response_schema},
                "text/event-stream": {"schema": {"type": "string", "description": "Server-Sent Events, one JSON message per data line"}}
            })
        } else {
            json!({"application/json": {"schema": response_schema}})
        };
        let service = route.method.parent_service();
        let mut operation_id = format!("{}_{}", service.name(), route.method.name());
        let mut suffix = 2;
        while !operation_ids.insert(operation_id.clone()) {
            operation_id = format!("{}_{}_{suffix}", service.name(), route.method.name());
            suffix += 1;
        }
        let public = aida_core::auth::is_public(&route.grpc_path);
        let mut operation = json!({
            "operationId": operation_id,
            "tags": [service.name()],
            "summary": format!("{} (gRPC {})", route.method.name(), route.grpc_path),
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": content},
                "default": {
                    "description": "An error: google.rpc.Status with its details",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}}
                }
            },
            "security": if public { json!([]) } else { json!([{"bearerAuth": []}]) }
        });
        if let Some(schema) = request_body {
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        paths
            .entry(route.template.openapi_path())
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), operation);
    }

    if let Some(status) = table
        .routes()
        .first()
        .map(|route| route.method.parent_pool().clone())
        .and_then(|pool| pool.get_message_by_name("google.rpc.Status"))
        && needed.insert(schema_name(&status))
    {
        pending.push(status);
    }
    let mut schemas = serde_json::Map::new();
    while let Some(message) = pending.pop() {
        let schema = message_schema(&message, &mut needed, &mut pending);
        schemas.insert(schema_name(&message), schema);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "AIDA-CRM over REST/JSON, transcoded from the gRPC contracts (google.api.http). Errors are google.rpc.Status."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
        "security": [{"bearerAuth": []}]
    })
}
