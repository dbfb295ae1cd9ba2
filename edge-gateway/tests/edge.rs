//! The edge gateway in front of the real services (`aida::Mesh`): REST/JSON transcoding,
//! errors, streaming, OpenAPI, grpc-web, the JWT negative matrix (HS256 and an ES256 JWKS),
//! the RBAC matrix of every route and role, rate limits and the analytics cache; and in
//! `edge/access.rs`, the holes a viewer or a sales rep of a tenant must not find.

mod access;
mod audit;
mod privacy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aida::Mesh;
use aida_core::auth::Claims;
use aida_core::testing::{Backend, TestEnv, eventually};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The keys an ES256 identity provider publishes, mutable so tests can rotate them.
struct Jwks {
    keys: Arc<Mutex<Vec<Value>>>,
    url: String,
}

/// An ES256 key: (kid, PKCS#8 PEM of the private key, public JWK).
fn es256_key(kid: &str) -> (String, Vec<u8>, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = pair.public_key_raw();
    let (x, y) = (&raw[1..33], &raw[33..65]);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
    (kid.to_owned(), pair.serialize_pem().into_bytes(), jwk)
}

async fn jwks_server(keys: Vec<Value>) -> Jwks {
    let keys = Arc::new(Mutex::new(keys));
    let served = keys.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(json!({"keys": served.lock().expect("keys").clone()})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Jwks {
        keys,
        url: format!("http://{address}/jwks.json"),
    }
}

struct Edge {
    env: TestEnv,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    mesh: Mesh,
}

impl Edge {
    async fn start(configure: impl FnOnce(&mut aida_core::Settings)) -> Self {
        Self::start_on(Backend::Embedded, configure).await
    }

    async fn start_on(backend: Backend, configure: impl FnOnce(&mut aida_core::Settings)) -> Self {
        let mut env = TestEnv::new(backend).await;
        let settings = &mut env.settings;
        settings.listen.leads_port = 0;
        settings.listen.deals_port = 0;
        settings.listen.comms_port = 0;
        settings.listen.analytics_port = 0;
        settings.edge.port = 0;
        settings.edge.rate_limit_per_second = 1000;
        settings.edge.rate_limit_burst = 1000;
        configure(settings);
        let shutdown = CancellationToken::new();
        let mesh = Mesh::start(&env.settings, shutdown.clone())
            .await
            .expect("mesh");
        let base = format!("http://{}", mesh.edge_address);
        Self {
            env,
            base,
            http: reqwest::Client::new(),
            shutdown,
            mesh,
        }
    }

    fn token(&self, tenant: &str, roles: &[&str]) -> String {
        self.env.token_with(tenant, roles)
    }

    /// POST `body` to `path` with the bearer `token`.
    async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// GET `path` with the bearer `token`: the raw response.
    async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("send")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, json)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn violated(json: &Value) -> Vec<String> {
    json["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|detail| {
            detail["fieldViolations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|violation| violation["field"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_json_maps_onto_the_services_by_their_http_annotations() {
    let edge = Edge::start(|settings| settings.edge.max_body_bytes = 4096).await;
    let admin = edge.token("acme", &["admin"]);
    let token = Some(admin.as_str());
    use reqwest::Method;

    // body: "lead"; canonical JSON out (lowerCamelCase, enums by name, timestamps RFC 3339).
    let (status, headers, lead) = edge
        .call(Method::POST, "/v1/leads", token, Some(json!({"email": "Ada@Example.com", "first_name": "Ada", "source": "LEAD_SOURCE_EVENT"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{lead}");
    assert_eq!(
        (
            lead["email"].as_str(),
            lead["firstName"].as_str(),
            lead["source"].as_str()
        ),
        (
            Some("ada@example.com"),
            Some("Ada"),
            Some("LEAD_SOURCE_EVENT")
        )
    );
    assert_eq!(lead["status"], "LEAD_STATUS_NEW");
    assert!(
        lead["createTime"]
            .as_str()
            .is_some_and(|time| time.ends_with('Z'))
    );
    assert!(headers.contains_key("etag") && headers.contains_key("x-request-id"));
    let id = lead["id"].as_str().expect("id").to_owned();

    // Path variables, query parameters (both names), custom verbs, update masks.
    let (status, _, got) = edge
        .call(Method::GET, &format!("/v1/leads/{id}"), token, None)
        .await;
    assert_eq!(
        (status, got["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (status, _, page) = edge
        .call(
            Method::GET,
            "/v1/leads?pageSize=1&order_by=email&filter=source%20%3D%20EVENT",
            token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["totalSize"], 1);
    let (status, _, patched) = edge
        .call(
            Method::PATCH,
            &format!("/v1/leads/{id}?updateMask=company,title"),
            token,
            Some(json!({"company": "AE", "title": "CTO", "lastName": "ignored"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (patched["company"].as_str(), patched["lastName"].as_str()),
        (Some("AE"), Some(""))
    );
    let (status, _, qualified) = edge
        .call(
            Method::POST,
            &format!("/v1/leads/{id}:qualify"),
            token,
            Some(json!({"note": "ready"})),
        )
        .await;
    assert_eq!(
        (status, qualified["status"].as_str()),
        (StatusCode::OK, Some("LEAD_STATUS_QUALIFIED"))
    );

    // 64-bit integers travel as strings; numbers are accepted in.
    let (status, _, deal) = edge
        .call(Method::POST, "/v1/deals", token, Some(json!({"name": "Big", "amount": {"currencyCode": "EUR", "amountMinor": 9007199254740993u64}})))
        .await;
    assert_eq!(status, StatusCode::OK, "{deal}");
    assert_eq!(deal["amount"]["amountMinor"], "9007199254740993");

    // Errors: the standard status table and google.rpc.Status with its details (the gRPC
    // code, the fields a BadRequest names).
    let missing_lead = format!("/v1/leads/{}", uuid::Uuid::now_v7());
    let reject = format!("/v1/leads/{id}:reject");
    let any_deal = format!("/v1/deals/{}", uuid::Uuid::now_v7());
    let duplicate = json!({"email": "dup@example.com"});
    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        Option<Value>,
        StatusCode,
        Option<i64>,
        &'a [&'a str],
    );
    let cases: [Case; 11] = [
        (
            "invalid e-mail",
            Method::POST,
            "/v1/leads",
            Some(json!({"email": "nope"})),
            StatusCode::BAD_REQUEST,
            Some(3),
            &["lead.email"],
        ),
        (
            "unknown field",
            Method::POST,
            "/v1/leads",
            Some(json!({"email": "x@example.com", "colour": "red"})),
            StatusCode::BAD_REQUEST,
            Some(3),
            &["lead.colour"],
        ),
        (
            "unknown query parameter",
            Method::GET,
            "/v1/leads?colour=red",
            None,
            StatusCode::BAD_REQUEST,
            Some(3),
            &["colour"],
        ),
        (
            "no such lead",
            Method::GET,
            &missing_lead,
            None,
            StatusCode::NOT_FOUND,
            Some(5),
            &[],
        ),
        (
            "first capture",
            Method::POST,
            "/v1/leads",
            Some(duplicate.clone()),
            StatusCode::OK,
            None,
            &[],
        ),
        (
            "the same e-mail again",
            Method::POST,
            "/v1/leads",
            Some(duplicate),
            StatusCode::CONFLICT,
            None,
            &[],
        ),
        (
            "stale etag is ABORTED → 409",
            Method::POST,
            &reject,
            Some(json!({"reason": "x", "etag": "v999"})),
            StatusCode::CONFLICT,
            None,
            &[],
        ),
        (
            "PUT on a collection",
            Method::PUT,
            "/v1/leads",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            &[],
        ),
        (
            "unknown path",
            Method::GET,
            "/v1/nothing",
            None,
            StatusCode::NOT_FOUND,
            None,
            &[],
        ),
        (
            "body over the limit",
            Method::POST,
            "/v1/leads",
            Some(json!({"firstName": "x".repeat(5000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            &[],
        ),
        (
            "DELETE of a deal",
            Method::DELETE,
            &any_deal,
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            &[],
        ),
    ];
    for (name, method, path, body, expected, code, fields) in cases {
        let (status, _, error) = edge.call(method, path, token, body).await;
        assert_eq!(status, expected, "{name}: {error}");
        if let Some(code) = code {
            assert_eq!(error["code"].as_i64(), Some(code), "{name}: {error}");
        }
        if !fields.is_empty() {
            assert_eq!(violated(&error), fields, "{name}");
        }
    }

    // Conditional GET.
    let first = edge
        .http
        .get(format!("{}/v1/leads/{id}", edge.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("get");
    let etag = first.headers()["etag"].to_str().expect("etag").to_owned();
    let again = edge
        .http
        .get(format!("{}/v1/leads/{id}", edge.base))
        .bearer_auth(&admin)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_arrive_as_ndjson_or_server_sent_events() {
    let edge = Edge::start(|_| {}).await;
    let admin = edge.token("acme", &["admin"]);
    for (accept, marker) in [
        ("application/x-ndjson", "{\"deal\":"),
        ("text/event-stream", "data: {\"deal\":"),
    ] {
        let response = edge
            .http
            .get(format!("{}/v1/deals:watch", edge.base))
            .bearer_auth(&admin)
            .header("accept", accept)
            .send()
            .await
            .expect("watch");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], accept);
        tokio::time::sleep(Duration::from_millis(300)).await;
        edge.post(
            "/v1/deals",
            &admin,
            json!({"name": "Live", "amount": {"currencyCode": "EUR", "amountMinor": "1"}}),
        )
        .await;
        let mut response = response;
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("in time")
            .expect("chunk")
            .expect("data");
        let text = String::from_utf8_lossy(&chunk);
        assert!(text.contains(marker), "{accept}: {text}");
        assert!(text.contains("\"eventType\":\"deals.created\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_openapi_3_1_and_covers_every_route() {
    let edge = Edge::start(|_| {}).await;
    let (status, _, document) = edge
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/v1/leads/{id}:qualify"]["post"].is_object());
    assert!(document["paths"]["/v1/leads/{lead.id}"]["patch"]["requestBody"].is_object());
    assert_eq!(
        document["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(
        document["components"]["schemas"]["aida.common.v1.Money"]["properties"]["amountMinor"]["type"],
        "string"
    );
    let operations: usize = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |ops| ops.len()))
        .sum();
    let rpcs = aida_core::rbac::TABLE.len();
    assert_eq!(operations, rpcs, "one operation per RPC");

    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), serde_json::to_vec(&document).expect("json")).expect("write");
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/aida/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let output = std::process::Command::new(&python)
        .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(file.path())
        .output()
        .expect("run openapi-spec-validator (scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_reach_the_services_with_cors_for_browsers() {
    let edge =
        Edge::start(|settings| settings.edge.cors_origins = vec!["https://app.example.com".into()])
            .await;
    let admin = edge.token("acme", &["admin"]);
    let (_, _, lead) = edge
        .post("/v1/leads", &admin, json!({"email": "web@example.com"}))
        .await;
    let message = aida_proto::aida::leads::v1::GetLeadRequest {
        id: lead["id"].as_str().expect("id").to_owned(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);

    let preflight = edge
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/aida.leads.v1.LeadService/GetLead", edge.base),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    for (content_type, encode) in [
        ("application/grpc-web+proto", false),
        ("application/grpc-web-text", true),
    ] {
        let body = if encode {
            base64::engine::general_purpose::STANDARD
                .encode(&frame)
                .into_bytes()
        } else {
            frame.clone()
        };
        let response = edge
            .http
            .post(format!("{}/aida.leads.v1.LeadService/GetLead", edge.base))
            .header("content-type", content_type)
            .header("accept", content_type)
            .header("x-grpc-web", "1")
            .header("origin", "https://app.example.com")
            .bearer_auth(&admin)
            .body(body)
            .send()
            .await
            .expect("grpc-web");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["access-control-expose-headers"]
                .to_str()
                .expect("header")
                .contains("grpc-status")
        );
        let grpc_error = response
            .headers()
            .get("grpc-message")
            .map(|value| value.to_str().unwrap_or_default().to_owned());
        let bytes = response.bytes().await.expect("body");
        assert!(
            !bytes.is_empty(),
            "{content_type}: no body ({grpc_error:?})"
        );
        let bytes = if encode {
            // Each frame is encoded on its own, padding included: decode quantum by quantum.
            bytes
                .chunks(4)
                .flat_map(|quantum| {
                    base64::engine::general_purpose::STANDARD
                        .decode(quantum)
                        .expect("base64")
                })
                .collect()
        } else {
            bytes.to_vec()
        };
        let length = u32::from_be_bytes(bytes[1..5].try_into().expect("length")) as usize;
        let got = aida_proto::aida::leads::v1::Lead::decode(&bytes[5..5 + length]).expect("lead");
        assert_eq!(got.email, "web@example.com");
        let trailers = String::from_utf8_lossy(&bytes[5 + length + 5..]);
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
    }

    let denied = edge
        .http
        .post(format!("{}/aida.leads.v1.LeadService/GetLead", edge.base))
        .header("content-type", "application/grpc-web+proto")
        .body(frame)
        .send()
        .await
        .expect("grpc-web without a token");
    assert_eq!(denied.headers()["grpc-status"], "16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_web_client_under_node_calls_the_services_through_the_edge() {
    let dir = std::path::PathBuf::from(std::env::var("TEST_WEB_CLIENT_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/aida/web",
            std::env::var("HOME").unwrap_or_default()
        )
    }));
    assert!(
        dir.join("gen/aida/leads/v1/leads_pb.js").exists(),
        "{} has no generated client: scripts/test prepares it",
        dir.display()
    );
    let edge = Edge::start(|_| {}).await;
    let admin = edge.token("acme", &["admin"]);

    // The script sits beside node_modules/ and gen/ so that its imports resolve.
    let script = dir.join(format!("grpc_web_client_{}.mjs", aida_core::random_hex(6)));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/grpc_web_client.mjs"),
        &script,
    )
    .expect("copy the client script");
    let (base, run) = (edge.base.clone(), script.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&run)
            .env("EDGE_URL", base)
            .env("TOKEN", admin)
            .output()
    })
    .await
    .expect("join")
    .expect("run node");
    let _ = std::fs::remove_file(&script);
    assert!(
        output.status.success(),
        "node: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");

    assert_eq!(report["captured"]["email"], "browser@example.com");
    assert_eq!(report["fetched"]["id"], report["captured"]["id"]);
    assert_eq!(report["fetched"]["company"], "Hopper Labs");
    // Errors arrive as gRPC statuses with their details (grpc-status-details-bin).
    assert_eq!(report["invalid"]["code"], "InvalidArgument", "{report}");
    assert!(
        report["invalid"]["fields"]
            .as_array()
            .is_some_and(|fields| fields.iter().any(|field| field == "lead.email")),
        "{report}"
    );
    assert_eq!(
        report["unauthenticated"]["code"], "Unauthenticated",
        "{report}"
    );

    // What the browser wrote is really there, over REST too.
    let token = edge.token("acme", &["admin"]);
    let id = report["captured"]["id"].as_str().expect("id");
    let (status, _, lead) = edge
        .call(
            reqwest::Method::GET,
            &format!("/v1/leads/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lead["firstName"], "Grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_grpc_passes_through_the_edge_for_many_calls_on_one_connection() {
    use aida_proto::aida::leads::v1::GetLeadRequest;
    use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;

    let edge = Edge::start(|_| {}).await;
    let admin = edge.token("acme", &["admin"]);
    let (_, _, lead) = edge
        .post("/v1/leads", &admin, json!({"email": "native@example.com"}))
        .await;
    let id = lead["id"].as_str().expect("id").to_owned();
    let channel = tonic::transport::Channel::from_shared(edge.base.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect to the edge");
    let mut client = LeadServiceClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {admin}").parse().expect("header");

    // Hundreds of unary calls share one HTTP/2 connection through the edge to the service:
    // none may be refused by the upstream's flood protection.
    for call in 0..400 {
        let mut request = tonic::Request::new(GetLeadRequest { id: id.clone() });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        let got = client
            .get_lead(request)
            .await
            .unwrap_or_else(|status| panic!("call {call}: {status:?}"))
            .into_inner();
        assert_eq!(got.email, "native@example.com");
    }

    let denied = client
        .get_lead(GetLeadRequest { id })
        .await
        .expect_err("no token");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_malformed_tokens_are_all_401_and_valid_ones_pass() {
    let (kid, pem, jwk) = es256_key("key-1");
    let jwks = jwks_server(vec![jwk.clone()]).await;
    let jwks_url = jwks.url.clone();
    let edge = Edge::start(move |settings| {
        settings.auth.jwks_url = Some(jwks_url);
        settings.auth.jwks_refresh_secs = 1;
    })
    .await;
    let settings = &edge.env.settings;
    let now = aida_core::auth::unix_now();
    let claims = Claims {
        sub: "ada".into(),
        tenant_id: "acme".into(),
        roles: vec!["admin".into()],
        iss: settings.auth.issuer.clone(),
        aud: settings.auth.audience.clone(),
        exp: now + 600,
        iat: Some(now),
        nbf: None,
    };
    let es256 = |claims: &Value, kid: Option<&str>, key: &[u8]| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(key).expect("pem"),
        )
        .expect("sign")
    };
    let claims_json = serde_json::to_value(&claims).expect("claims");
    let without = |field: &str| {
        let mut value = claims_json.clone();
        value.as_object_mut().expect("object").remove(field);
        value
    };
    let with = |field: &str, value: Value| {
        let mut claims = claims_json.clone();
        claims[field] = value;
        claims
    };
    let valid_es256 = es256(&claims_json, Some(&kid), &pem);
    let valid_hs256 = edge.token("acme", &["admin"]);
    let (_, other_pem, _) = es256_key("key-1");
    let tampered = {
        let parts: Vec<&str> = valid_es256.split('.').collect();
        let payload = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&with("tenant_id", json!("globex"))).expect("json"));
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let public_key_as_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims_json,
        &jsonwebtoken::EncodingKey::from_secret(serde_json::to_vec(&jwk).expect("jwk").as_slice()),
    )
    .expect("sign");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims_json).expect("json"))
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("empty bearer", Some(String::new())),
        ("garbage", Some("not.a.jwt".into())),
        ("two segments", Some("abc.def".into())),
        ("alg none", Some(unsigned)),
        (
            "HS256 signed with the public key",
            Some(public_key_as_secret),
        ),
        (
            "unknown kid",
            Some(es256(&claims_json, Some("key-9"), &pem)),
        ),
        ("no kid", Some(es256(&claims_json, None, &pem))),
        (
            "right kid, wrong key",
            Some(es256(&claims_json, Some(&kid), &other_pem)),
        ),
        (
            "expired",
            Some(es256(&with("exp", json!(now - 3600)), Some(&kid), &pem)),
        ),
        (
            "not yet valid",
            Some(es256(&with("nbf", json!(now + 3600)), Some(&kid), &pem)),
        ),
        ("no exp", Some(es256(&without("exp"), Some(&kid), &pem))),
        ("no iss", Some(es256(&without("iss"), Some(&kid), &pem))),
        ("no aud", Some(es256(&without("aud"), Some(&kid), &pem))),
        ("no sub", Some(es256(&without("sub"), Some(&kid), &pem))),
        (
            "no tenant",
            Some(es256(&without("tenant_id"), Some(&kid), &pem)),
        ),
        (
            "wrong aud",
            Some(es256(&with("aud", json!("elsewhere")), Some(&kid), &pem)),
        ),
        (
            "wrong iss",
            Some(es256(&with("iss", json!("evil")), Some(&kid), &pem)),
        ),
        ("tampered payload", Some(tampered)),
        ("oversized", Some("a".repeat(9 * 1024))),
    ];
    assert!(cases.len() >= 15);
    for (name, token) in &cases {
        let mut request = edge.http.get(format!("{}/v1/leads", edge.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
    }
    let basic = edge
        .http
        .get(format!("{}/v1/leads", edge.base))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .expect("basic");
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    for (name, token) in [
        ("ES256 from the JWKS", &valid_es256),
        ("HS256 development token", &valid_hs256),
    ] {
        let response = edge.get_as("/v1/leads", token).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
    }

    // Key rotation: a token signed by a key published after start is accepted once the
    // edge refreshes the key set (an unknown kid triggers it).
    let (new_kid, new_pem, new_jwk) = es256_key("key-2");
    jwks.keys.lock().expect("keys").push(new_jwk);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = es256(&claims_json, Some(&new_kid), &new_pem);
    let response = edge.get_as("/v1/leads", &rotated).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "rotated key accepted after refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supabase_access_token_is_accepted_through_mapped_claims_and_its_own_issuer() {
    const ISSUER: &str = "https://abcdefghijklmnop.supabase.co/auth/v1";
    let (kid, pem, jwk) = es256_key("supabase-1");
    let jwks = jwks_server(vec![jwk]).await;
    let jwks_url = jwks.url.clone();
    let edge = Edge::start(move |settings| {
        settings.auth.jwks_url = Some(jwks_url);
        settings.auth.jwks_issuer = Some(ISSUER.into());
        settings.auth.jwks_audience = Some("authenticated".into());
        settings.auth.tenant_claim = "app_metadata.tenant_id".into();
        settings.auth.roles_claim = "app_metadata.roles".into();
    })
    .await;
    let now = aida_core::auth::unix_now();
    // Exactly what Supabase Auth issues (a custom access token hook or the admin API puts
    // the tenant and roles into app_metadata, which users cannot write).
    let supabase = |app_metadata: Value, audience: &str| {
        let claims = json!({
            "iss": ISSUER,
            "sub": "2f0d6c1e-8a43-4b7e-9a55-0c1d2e3f4a5b",
            "aud": audience,
            "exp": now + 3600,
            "iat": now,
            "email": "ada@acme.example",
            "phone": "",
            "app_metadata": app_metadata,
            "user_metadata": {"email_verified": true, "full_name": "Ada Lovelace"},
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": "b6a3c1d2-0e1f-4a5b-8c9d-7e6f5a4b3c2d",
            "is_anonymous": false,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("pem"),
        )
        .expect("sign")
    };
    let get = |token: String| {
        let request = edge
            .http
            .get(format!("{}/v1/leads", edge.base))
            .bearer_auth(token);
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let metadata = json!({"provider": "email", "providers": ["email"], "tenant_id": "acme", "roles": ["sales_rep"]});
    let (status, body) = get(supabase(metadata.clone(), "authenticated")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = get(supabase(
        json!({"provider": "email", "providers": ["email"], "roles": ["admin"]}),
        "authenticated",
    ))
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("app_metadata.tenant_id")),
        "the refusal names the missing claim: {body}"
    );
    // Supabase's own `role: authenticated` grants nothing: AIDA roles come from the
    // configured claim only.
    let (status, _) = get(supabase(json!({"tenant_id": "acme"}), "authenticated")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The platform's role is not the identity provider's to grant.
    let operator = supabase(
        json!({"tenant_id": "acme", "roles": ["operator"]}),
        "authenticated",
    );
    let response = edge.get_as("/v1/release", &operator).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // The identity provider's audience is its own: AIDA's development audience is refused
    // on a JWKS token, and the development issuer's tokens still pass with theirs.
    let (status, _) = get(supabase(metadata, "aida-crm")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let development = aida::mint_token(
        &edge.env.settings,
        "acme",
        "dev-admin",
        &["admin".to_owned()],
        Duration::from_secs(600),
    )
    .expect("mint");
    let (status, body) = get(development).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_gets_exactly_the_routes_the_rbac_table_allows() {
    let edge = Edge::start(|_| {}).await;
    let pool =
        prost_reflect::DescriptorPool::decode(aida_proto::FILE_DESCRIPTOR_SET).expect("pool");
    let routes = aida_edge::routes::RouteTable::from_pool(&pool, "aida.").expect("routes");
    let id = uuid::Uuid::now_v7().to_string();
    let roles = [
        "admin",
        "manager",
        "sales_rep",
        "analyst",
        "viewer",
        "service",
        "operator",
    ];
    let tokens: Vec<(&str, String)> = roles
        .iter()
        .map(|role| (*role, edge.token("acme", &[role])))
        .collect();
    let mut checked = 0;
    for route in routes.routes() {
        let path = route.template.openapi_path();
        let mut concrete = path.clone();
        for field in route.template.field_paths() {
            concrete = concrete.replace(&format!("{{{field}}}"), &id);
        }
        let method =
            reqwest::Method::from_bytes(route.http_method.as_str().as_bytes()).expect("method");
        for (role, token) in &tokens {
            let mut request = edge
                .http
                .request(method.clone(), format!("{}{concrete}", edge.base))
                .bearer_auth(token);
            if route.body != aida_edge::routes::BodyRule::None {
                request = request.json(&json!({}));
            }
            let response = request.send().await.expect("send");
            let expected = match aida_core::rbac::rule(&route.grpc_path) {
                aida_core::rbac::Rule::Public => true,
                _ => aida_core::rbac::allowed(&route.grpc_path, &[(*role).to_owned()]),
            };
            let forbidden = response.status() == StatusCode::FORBIDDEN;
            assert_eq!(
                !forbidden,
                expected,
                "{role} on {} {path}: {}",
                route.http_method,
                response.status()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, routes.routes().len() * roles.len());

    // Tenants and owners: another tenant's lead is 404; a rep sees only its own; a viewer
    // sees no contact data.
    let admin = edge.token("acme", &["admin"]);
    let (_, _, lead) = edge
        .post(
            "/v1/leads",
            &admin,
            json!({"email": "owned@example.com", "phone": "+44 20 7946 0958", "ownerId": "rep-2"}),
        )
        .await;
    let lead_path = format!("/v1/leads/{}", lead["id"].as_str().expect("id"));
    let (status, _, _) = edge
        .call(
            reqwest::Method::GET,
            &lead_path,
            Some(&edge.token("globex", &["admin"])),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let rep = edge
        .env
        .issuer
        .mint("acme", "rep-1", &["sales_rep"], Duration::from_secs(600))
        .expect("mint");
    let (status, _, _) = edge
        .call(reqwest::Method::GET, &lead_path, Some(&rep), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not the rep's lead");
    let (status, _, seen) = edge
        .call(
            reqwest::Method::GET,
            &lead_path,
            Some(&edge.token("acme", &["viewer"])),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (seen["email"].as_str(), seen["phone"].as_str()),
        (Some(""), Some(""))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_is_rate_limited_and_another_is_not() {
    let edge = Edge::start(|settings| {
        settings.edge.rate_limit_per_second = 2;
        settings.edge.rate_limit_burst = 5;
    })
    .await;
    let noisy = edge.token("noisy", &["admin"]);
    let quiet = edge.token("quiet", &["admin"]);
    let mut limited = 0;
    for _ in 0..20 {
        let response = edge.get_as("/v1/leads", &noisy).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .expect("header")
                .parse()
                .expect("seconds");
            assert!(wait >= 1);
        }
    }
    assert!(limited >= 10, "only {limited} of 20 limited");
    // At once, before a token refills (one every 500 ms): the same limit over gRPC.
    let grpc_limited = {
        let frame = [0u8, 0, 0, 0, 0];
        let response = edge
            .http
            .post(format!("{}/aida.leads.v1.LeadService/ListLeads", edge.base))
            .header("content-type", "application/grpc-web+proto")
            .bearer_auth(&noisy)
            .body(frame.to_vec())
            .send()
            .await
            .expect("grpc-web");
        response
            .headers()
            .get("grpc-status")
            .map(|value| value.to_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        grpc_limited.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED over gRPC"
    );
    for _ in 0..5 {
        let response = edge.get_as("/v1/leads", &quiet).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the quiet tenant is unaffected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_reports_are_cached_per_tenant_until_the_next_snapshot() {
    let edge = Edge::start(|settings| {
        settings.analytics.snapshot_interval_secs = 1;
        settings.edge.cache_ttl_secs = 600;
    })
    .await;
    let admin = edge.token("acme", &["admin"]);
    let funnel = || {
        edge.http
            .get(format!("{}/v1/analytics/funnel", edge.base))
            .bearer_auth(&admin)
            .send()
    };
    let first = funnel().await.expect("first");
    assert_eq!(first.headers()["x-cache"], "miss");
    let etag = first.headers()["etag"].to_str().expect("etag").to_owned();
    let second = funnel().await.expect("second");
    assert_eq!(second.headers()["x-cache"], "hit");
    let not_modified = edge
        .http
        .get(format!("{}/v1/analytics/funnel", edge.base))
        .bearer_auth(&admin)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    // New data: the next snapshot drops the cached report and the new count shows.
    edge.post("/v1/leads", &admin, json!({"email": "fresh@example.com"}))
        .await;
    let fresh = eventually(Duration::from_secs(15), || async {
        let response = funnel().await.expect("funnel");
        let body: Value = response.json().await.expect("json");
        body["total"]["captured"] == "1"
    })
    .await;
    assert!(fresh, "the cache was invalidated by analytics.computed");
}
