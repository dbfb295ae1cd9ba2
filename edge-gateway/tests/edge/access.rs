//! Access control tried as an attacker inside a tenant would: a viewer who may not read
//! contact data must not recover it through page tokens, orderings or filters; a sales rep
//! must not convert a colleague's lead; unauthenticated floods, old tracking links, header
//! floods and bearer casing. Every hole over REST, grpc-web and direct gRPC, on both engine
//! pairs where storage is involved.

use aida_comms::domain::{LinkKind, TrackingClaim};
use aida_core::pagination::PageTokens;
use aida_core::testing::{violated_fields, with_token};
use aida_proto::aida::deals::v1 as deals;
use aida_proto::aida::deals::v1::deal_service_client::DealServiceClient;
use aida_proto::aida::leads::v1 as leads;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use tonic::transport::Channel;

use super::*;

/// The leads every test seeds: contact data that must never reach a viewer, spelled so
/// that no visible field (names, company) contains any part of it.
const CONTACTS: [(&str, &str, &str); 4] = [
    ("qx7mail0@leakcheck.example", "+44 20 7946 0100", "Ann"),
    ("qx7mail1@leakcheck.example", "+44 20 7946 0101", "Bea"),
    ("qx7mail2@leakcheck.example", "+44 20 7946 0102", "Cy"),
    ("qx7mail3@leakcheck.example", "+44 20 7946 0103", "Dee"),
];

/// Pieces of the seeded contact data found in `bytes`.
fn leaked(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    let mut needles = vec!["qx7mail".to_owned(), "leakcheck".to_owned()];
    for (_, phone, _) in CONTACTS {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        needles.push(digits[digits.len() - 8..].to_owned());
    }
    needles
        .into_iter()
        .filter(|needle| text.contains(needle.as_str()))
        .collect()
}

/// What a page token reveals when decoded as base64url, as an attacker would.
fn token_leaks(token: &str) -> Vec<String> {
    let mut found = leaked(token.as_bytes());
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')) {
        found.extend(leaked(&bytes));
    }
    for part in token.split('.') {
        if let Ok(bytes) = URL_SAFE_NO_PAD.decode(part) {
            found.extend(leaked(&bytes));
        }
    }
    found
}

/// A grpc-web reply: the gRPC status code and message, the decoded response, the raw body.
struct WebReply<R> {
    code: i32,
    message: Option<R>,
    raw: Vec<u8>,
}

impl Edge {
    fn token_as(&self, tenant: &str, subject: &str, roles: &[&str]) -> String {
        self.env
            .issuer
            .mint(tenant, subject, roles, Duration::from_secs(600))
            .expect("mint")
    }

    /// `GET path?query` with `token`: the status and the raw body.
    async fn get_raw(
        &self,
        path: &str,
        query: &[(&str, String)],
        token: &str,
    ) -> (StatusCode, bytes::Bytes) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let status = response.status();
        (status, response.bytes().await.expect("body"))
    }

    /// Captures [`CONTACTS`] in `tenant` as `rep-a`; their ids.
    async fn seed(&self, tenant: &str) -> Vec<String> {
        let rep = self.token_as(tenant, "rep-a", &["sales_rep"]);
        let mut ids = Vec::new();
        for (email, phone, name) in CONTACTS {
            let (status, _, lead) = self
                .call(
                    reqwest::Method::POST,
                    "/v1/leads",
                    Some(&rep),
                    Some(json!({"email": email, "phone": phone, "firstName": name, "lastName": format!("{name}son"), "company": format!("{name} Ltd")})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{lead}");
            ids.push(lead["id"].as_str().expect("id").to_owned());
        }
        ids
    }

    /// One unary grpc-web call (binary framing), as a browser makes it.
    async fn grpc_web<R: prost::Message + Default>(
        &self,
        method: &str,
        token: &str,
        request: &impl prost::Message,
    ) -> WebReply<R> {
        let message = request.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let response = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .bearer_auth(token)
            .body(frame)
            .send()
            .await
            .expect("grpc-web");
        let header_code = response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let raw = response.bytes().await.expect("body").to_vec();
        let (mut code, mut decoded, mut rest) = (header_code, None, raw.as_slice());
        while rest.len() >= 5 {
            let flag = rest[0];
            let length = u32::from_be_bytes(rest[1..5].try_into().expect("length")) as usize;
            let payload = &rest[5..5 + length];
            if flag & 0x80 == 0 {
                decoded = Some(R::decode(payload).expect("response message"));
            } else {
                let trailers = String::from_utf8_lossy(payload);
                code = trailers
                    .lines()
                    .find_map(|line| line.trim().strip_prefix("grpc-status:"))
                    .and_then(|value| value.trim().parse().ok());
            }
            rest = &rest[5 + length..];
        }
        WebReply {
            code: code.expect("a grpc-status"),
            message: decoded,
            raw,
        }
    }

    /// A direct gRPC channel to `service`, bypassing the edge.
    async fn direct(&self, service: aida::Service) -> Channel {
        let address = self.mesh.address(service).expect("service address");
        Channel::from_shared(format!("http://{address}"))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }
}

const SORTABLE: [&str; 9] = [
    "email",
    "first_name",
    "last_name",
    "company",
    "source",
    "status",
    "owner_id",
    "create_time",
    "update_time",
];

async fn a_viewer_pages_through_leads_in_every_order_and_no_byte_reveals_contact_data(
    backend: Backend,
) {
    let edge = Edge::start_on(backend, |_| {}).await;
    edge.seed("acme").await;
    let viewer = edge.token("acme", &["viewer"]);
    let admin = edge.token("acme", &["admin"]);

    // REST, one lead per page, in every sortable order both ways.
    for (field, direction) in SORTABLE
        .iter()
        .flat_map(|field| [(*field, "asc"), (*field, "desc")])
    {
        let order = format!("{field} {direction}");
        let mut page_token = String::new();
        let mut seen = 0;
        loop {
            let mut query = vec![("pageSize", "1".to_owned()), ("orderBy", order.clone())];
            if !page_token.is_empty() {
                query.push(("pageToken", page_token.clone()));
            }
            let (status, raw) = edge.get_raw("/v1/leads", &query, &viewer).await;
            assert_eq!(leaked(&raw), Vec::<String>::new(), "{order}: {raw:?}");
            let body: Value = serde_json::from_slice(&raw).expect("json");
            if field == "email" {
                // Ordering by a field one may not read reveals its order: refused.
                assert_eq!(status, StatusCode::BAD_REQUEST, "{order}: {body}");
                assert_eq!(violated(&body), vec!["order_by".to_owned()], "{body}");
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("email")
                );
                break;
            }
            assert_eq!(status, StatusCode::OK, "{order}: {body}");
            seen += body["leads"].as_array().map_or(0, Vec::len);
            page_token = body["nextPageToken"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert_eq!(token_leaks(&page_token), Vec::<String>::new(), "{order}");
            if page_token.is_empty() {
                break;
            }
        }
        if field != "email" {
            assert_eq!(seen, CONTACTS.len(), "{order}: every lead once");
        }
    }

    // Those who may read addresses may order by them, and their tokens are sealed too.
    let mut page_token = String::new();
    let mut seen = Vec::new();
    loop {
        let mut query = vec![
            ("pageSize", "1".to_owned()),
            ("orderBy", "email".to_owned()),
        ];
        if !page_token.is_empty() {
            query.push(("pageToken", page_token.clone()));
        }
        let (status, raw) = edge.get_raw("/v1/leads", &query, &admin).await;
        let body: Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.extend(
            body["leads"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|lead| lead["email"].as_str().unwrap_or_default().to_owned()),
        );
        page_token = body["nextPageToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(token_leaks(&page_token), Vec::<String>::new());
        if page_token.is_empty() {
            break;
        }
    }
    let mut expected: Vec<String> = CONTACTS.iter().map(|c| c.0.to_owned()).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "the admin pages through every address in order"
    );

    // grpc-web: the same refusal, and pages that hold nothing of the contacts.
    let refused = edge
        .grpc_web::<leads::ListLeadsResponse>(
            "aida.leads.v1.LeadService/ListLeads",
            &viewer,
            &leads::ListLeadsRequest {
                page_size: 1,
                order_by: "email".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(refused.code, tonic::Code::InvalidArgument as i32);
    let mut request = leads::ListLeadsRequest {
        page_size: 1,
        order_by: "company desc".into(),
        ..Default::default()
    };
    let mut seen = 0;
    loop {
        let reply = edge
            .grpc_web::<leads::ListLeadsResponse>(
                "aida.leads.v1.LeadService/ListLeads",
                &viewer,
                &request,
            )
            .await;
        assert_eq!(reply.code, 0);
        assert_eq!(leaked(&reply.raw), Vec::<String>::new());
        let page = reply.message.expect("a page");
        assert_eq!(token_leaks(&page.next_page_token), Vec::<String>::new());
        seen += page.leads.len();
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(seen, CONTACTS.len());

    // Direct gRPC to LeadService.
    let mut client = LeadServiceClient::new(edge.direct(aida::Service::Leads).await);
    let status = client
        .list_leads(with_token(
            &viewer,
            leads::ListLeadsRequest {
                order_by: "email desc".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("viewer ordering by email");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["order_by".to_owned()]);
    let mut request = leads::ListLeadsRequest {
        page_size: 1,
        order_by: "last_name".into(),
        ..Default::default()
    };
    let mut seen = 0;
    loop {
        let page = client
            .list_leads(with_token(&viewer, request.clone()))
            .await
            .expect("viewer lists")
            .into_inner();
        assert_eq!(
            leaked(&prost::Message::encode_to_vec(&page)),
            Vec::<String>::new()
        );
        assert_eq!(token_leaks(&page.next_page_token), Vec::<String>::new());
        seen += page.leads.len();
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(seen, CONTACTS.len());
}

/// Filters that would make `totalSize` an oracle of contact data.
const PROBES: [&str; 8] = [
    r#"email = "qx7mail0@leakcheck.example""#,
    r#"email = "qx7*""#,
    r#"email = "*@leakcheck.example""#,
    r#"email:"leakcheck""#,
    r#"phone = "+442079460100""#,
    r#"phone:"7946""#,
    r#"status = NEW AND (first_name = Ann OR email:"q")"#,
    r#"NOT phone = "x""#,
];

async fn a_viewers_filters_on_contact_fields_are_invalid_argument_on_every_door(backend: Backend) {
    let edge = Edge::start_on(backend, |_| {}).await;
    edge.seed("acme").await;
    let viewer = edge.token("acme", &["viewer"]);
    let mut leads_direct = LeadServiceClient::new(edge.direct(aida::Service::Leads).await);

    for filter in PROBES {
        for path in ["/v1/leads", "/v1/leads:search"] {
            let mut query = vec![("filter", filter.to_owned())];
            if path.ends_with("search") {
                query.push(("query", "people at a company".to_owned()));
            }
            let (status, raw) = edge.get_raw(path, &query, &viewer).await;
            let body: Value = serde_json::from_slice(&raw).expect("json");
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {filter}: {body}");
            assert_eq!(violated(&body), vec!["filter".to_owned()], "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("'email'") || message.contains("'phone'"),
                "the error names the field: {message}"
            );
            assert!(body.get("totalSize").is_none());
        }

        let reply = edge
            .grpc_web::<leads::ListLeadsResponse>(
                "aida.leads.v1.LeadService/ListLeads",
                &viewer,
                &leads::ListLeadsRequest {
                    filter: filter.into(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(reply.code, tonic::Code::InvalidArgument as i32, "{filter}");
        assert!(reply.message.is_none());

        let status = leads_direct
            .list_leads(with_token(
                &viewer,
                leads::ListLeadsRequest {
                    filter: filter.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(filter);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{filter}");
        assert_eq!(violated_fields(&status), vec!["filter".to_owned()]);
        let status = leads_direct
            .search_leads(with_token(
                &viewer,
                leads::SearchLeadsRequest {
                    query: "people".into(),
                    filter: filter.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(filter);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{filter}");
    }

    // Filters on what a viewer may read still work, and those who may read addresses
    // still filter on them: by exact value, as contact details are sealed at rest and
    // compared through their blind indexes.
    let admin = edge.token("acme", &["admin"]);
    let manager = edge.token("acme", &["manager"]);
    let analyst = edge.token("acme", &["analyst"]);
    for (token, filter, expected) in [
        (&viewer, "first_name%20%3D%20Ann", 1),
        (
            &admin,
            "email%20%3D%20%22QX7mail1%40leakcheck.example%22",
            1,
        ),
        (
            &manager,
            "email%20!%3D%20%22qx7mail1%40leakcheck.example%22",
            CONTACTS.len() - 1,
        ),
        (&analyst, "phone%20%3D%20%22%2B44%2020%207946%200102%22", 1),
    ] {
        let (status, _, page) = edge
            .call(
                reqwest::Method::GET,
                &format!("/v1/leads?filter={filter}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(
            (status, page["totalSize"].as_i64()),
            (StatusCode::OK, Some(expected as i64)),
            "{filter}: {page}"
        );
    }
    // A prefix or a substring of a sealed field cannot be answered by a blind index: 400
    // naming the filter, for everyone.
    for filter in ["email%20%3D%20%22qx7*%22", "phone%3A%227946%22"] {
        let (status, _, body) = edge
            .call(
                reqwest::Method::GET,
                &format!("/v1/leads?filter={filter}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}: {body}");
        assert!(
            body.to_string().contains("encrypted at rest"),
            "{filter}: {body}"
        );
    }
}

async fn a_sales_rep_cannot_convert_a_colleagues_lead_and_unknown_leads_are_not_found(
    backend: Backend,
) {
    let edge = Edge::start_on(backend, |_| {}).await;
    let ids = edge.seed("acme").await;
    let theirs = &ids[0];
    let admin = edge.token("acme", &["admin"]);
    let rep_b = edge.token_as("acme", "rep-b", &["sales_rep"]);
    let (_, _, before) = edge
        .call(
            reqwest::Method::GET,
            &format!("/v1/leads/{theirs}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(before["ownerId"], "rep-a");

    // REST.
    let (status, _, body) = edge.post("/v1/deals", &rep_b, json!({"name": "Poached", "leadId": theirs, "amount": {"currencyCode": "EUR", "amountMinor": "100"}}))
        .await;
    assert!(
        matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
        "{status}: {body}"
    );
    // grpc-web.
    let deal = |lead_id: &str| deals::CreateDealRequest {
        deal: Some(deals::Deal {
            name: "Poached".into(),
            lead_id: lead_id.to_owned(),
            amount: Some(aida_proto::aida::common::v1::Money {
                currency_code: "EUR".into(),
                amount_minor: 100,
            }),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let reply = edge
        .grpc_web::<deals::Deal>(
            "aida.deals.v1.DealService/CreateDeal",
            &rep_b,
            &deal(theirs),
        )
        .await;
    assert!(
        [
            tonic::Code::NotFound as i32,
            tonic::Code::PermissionDenied as i32
        ]
        .contains(&reply.code),
        "grpc-web: {}",
        reply.code
    );
    // Direct gRPC.
    let mut deals_direct = DealServiceClient::new(edge.direct(aida::Service::Deals).await);
    let status = deals_direct
        .create_deal(with_token(&rep_b, deal(theirs)))
        .await
        .expect_err("rep B on rep A's lead");
    assert!(
        matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::PermissionDenied
        ),
        "{status:?}"
    );

    // A lead that does not exist, for anyone: NOT_FOUND naming deal.lead_id.
    let random = uuid::Uuid::new_v4().to_string();
    let (status, _, body) = edge.post("/v1/deals", &admin, json!({"name": "Dangling", "leadId": random, "amount": {"currencyCode": "EUR", "amountMinor": "100"}}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(violated(&body), vec!["deal.lead_id".to_owned()], "{body}");
    let reply = edge
        .grpc_web::<deals::Deal>(
            "aida.deals.v1.DealService/CreateDeal",
            &admin,
            &deal(&random),
        )
        .await;
    assert_eq!(reply.code, tonic::Code::NotFound as i32);
    let status = deals_direct
        .create_deal(with_token(&admin, deal(&random)))
        .await
        .expect_err("dangling lead id");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(violated_fields(&status), vec!["deal.lead_id".to_owned()]);
    // Another tenant's lead is as unknown as a random one.
    let other_tenant = edge.token("globex", &["admin"]);
    let status = deals_direct
        .create_deal(with_token(&other_tenant, deal(theirs)))
        .await
        .expect_err("another tenant's lead");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Nothing happened to the lead, and no deal refers to it.
    let (_, _, after) = edge
        .call(
            reqwest::Method::GET,
            &format!("/v1/leads/{theirs}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(after, before, "the colleague's lead is untouched");
    let (_, _, listed) = edge
        .call(reqwest::Method::GET, "/v1/deals", Some(&admin), None)
        .await;
    assert_eq!(listed["totalSize"], 0, "{listed}");

    // Its owner still converts it.
    let rep_a = edge.token_as("acme", "rep-a", &["sales_rep"]);
    let (status, _, created) = edge.post("/v1/deals", &rep_a, json!({"name": "Mine", "leadId": theirs, "amount": {"currencyCode": "EUR", "amountMinor": "100"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let converted = eventually(Duration::from_secs(20), || async {
        let (_, _, lead) = edge
            .call(
                reqwest::Method::GET,
                &format!("/v1/leads/{theirs}"),
                Some(&admin),
                None,
            )
            .await;
        lead["status"] == "LEAD_STATUS_CONVERTED"
    })
    .await;
    assert!(converted, "the owner's deal converts the lead");
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    a_viewer_pages_through_leads_in_every_order_and_no_byte_reveals_contact_data,
    a_viewers_filters_on_contact_fields_are_invalid_argument_on_every_door,
    a_sales_rep_cannot_convert_a_colleagues_lead_and_unknown_leads_are_not_found
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_rate_limited_by_address_before_verification() {
    let edge = Edge::start(|settings| {
        settings.edge.anonymous_rate_limit_per_minute = 1;
        settings.edge.anonymous_rate_limit_burst = 3;
    })
    .await;
    let admin = edge.token("acme", &["admin"]);
    // Authenticated calls are the principal's, not the address's.
    for _ in 0..10 {
        let (status, _, body) = edge
            .call(reqwest::Method::GET, "/v1/leads", Some(&admin), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A flood of forged tokens: the first few are refused as forged, then the address is
    // over its rate and refused before its tokens are read.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for attempt in 0..8 {
        let (status, headers, _) = edge
            .call(
                reqwest::Method::GET,
                "/v1/leads",
                Some(&format!("forged.token.{attempt}")),
                None,
            )
            .await;
        statuses.push(status.as_u16());
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = headers.get("retry-after").cloned();
        }
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(
        statuses[3..].iter().all(|status| *status == 429),
        "{statuses:?}"
    );
    assert!(retry_after.is_some(), "429 says when to retry");
    let (status, _, _) = edge
        .call(reqwest::Method::GET, "/v1/leads", None, None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "no token at all");
    // While the address is blocked, even a valid token is not looked at.
    let (status, _, _) = edge
        .call(reqwest::Method::GET, "/v1/leads", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // grpc-web and gRPC share the same limit.
    let reply = edge
        .grpc_web::<leads::ListLeadsResponse>(
            "aida.leads.v1.LeadService/ListLeads",
            "forged",
            &leads::ListLeadsRequest::default(),
        )
        .await;
    assert_eq!(reply.code, tonic::Code::ResourceExhausted as i32);
    // The public tracking links count against their address too.
    let (status, _, _) = edge
        .call(reqwest::Method::GET, "/t/o/whatever", None, None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

/// Statuses of `count` calls to a public tracking link with `header` set to `value`.
async fn tracking_statuses(edge: &Edge, header: &str, value: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..count {
        let response = edge
            .http
            .get(format!("{}/t/o/not-a-link", edge.base))
            .header(header, value)
            .send()
            .await
            .expect("send");
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_public_links_are_limited_per_client_and_forged_headers_are_not() {
    let limited = |trusted: Vec<String>, header: &'static str| {
        Edge::start(move |settings| {
            settings.edge.anonymous_rate_limit_per_minute = 1;
            settings.edge.anonymous_rate_limit_burst = 2;
            settings.edge.trusted_proxies = trusted;
            settings.edge.client_ip_header = header.into();
        })
    };
    let loopback = || vec!["127.0.0.0/8".to_owned(), "::1".to_owned()];
    // Loopback plays Fly's proxy: every call arrives from it, naming its client.
    let edge = limited(loopback(), "fly-client-ip").await;
    let first = tracking_statuses(&edge, "fly-client-ip", "198.51.100.7", 3).await;
    assert!(first[..2].iter().all(|status| *status != 429), "{first:?}");
    assert_eq!(first[2], 429, "the client's own bucket is empty: {first:?}");
    // Another recipient behind the same proxy has a bucket of its own.
    let second = tracking_statuses(&edge, "fly-client-ip", "203.0.113.9", 2).await;
    assert!(second.iter().all(|status| *status != 429), "{second:?}");
    let again = tracking_statuses(&edge, "fly-client-ip", "198.51.100.7", 1).await;
    assert_eq!(again, [429], "the first client is still limited");
    // The header Fly does not set is the caller's own word: ignored (the proxy's bucket).
    let spoofed = tracking_statuses(&edge, "x-forwarded-for", "192.0.2.50", 3).await;
    assert_eq!(spoofed[2], 429, "{spoofed:?}");
    drop(edge);

    // A proxy that appends to X-Forwarded-For: the entry it added counts, not one a client
    // wrote to the left of it.
    let edge = limited(loopback(), "x-forwarded-for").await;
    let first = tracking_statuses(&edge, "x-forwarded-for", "192.0.2.9, 198.51.100.7", 3).await;
    assert_eq!(first[2], 429, "{first:?}");
    let forged_left =
        tracking_statuses(&edge, "x-forwarded-for", "192.0.2.10, 198.51.100.7", 1).await;
    assert_eq!(forged_left, [429], "a new left-hand entry is no new client");
    let other = tracking_statuses(&edge, "x-forwarded-for", "203.0.113.9", 2).await;
    assert!(other.iter().all(|status| *status != 429), "{other:?}");
    drop(edge);

    // Without trusted proxies the headers are ignored, so a flood cannot spread itself
    // over invented addresses.
    let edge = limited(Vec::new(), "fly-client-ip").await;
    let mut statuses = Vec::new();
    for client in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        statuses.extend(tracking_statuses(&edge, "fly-client-ip", client, 1).await);
    }
    assert_eq!(statuses[2..], [429, 429], "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_links_expire_and_unsubscribing_names_no_address() {
    let edge = Edge::start(|_| {}).await;
    let admin = edge.token("acme", &["admin"]);
    let (_, _, lead) = edge
        .post(
            "/v1/leads",
            &admin,
            json!({"email": "qx7mail9@leakcheck.example", "firstName": "Una"}),
        )
        .await;
    let (status, _, message) = edge.post("/v1/messages", &admin, json!({"leadId": lead["id"], "channel": "CHANNEL_EMAIL", "subject": "Hi", "body": "See https://example.com/x"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    let mail_dir = edge.env.settings.data_dir.join("mail");
    let mut emails = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            emails = aida_core::testing::eml_files(&mail_dir);
            std::future::ready(!emails.is_empty())
        })
        .await,
        "the e-mail was written"
    );
    let raw = emails[0]
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let token_of = |kind: &str| -> String {
        let marker = format!("/t/{kind}/");
        let start = raw.find(&marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len();
        raw[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect()
    };

    // Links carry their expiry: 90 days for opens and clicks, a year for unsubscribing.
    let tracking = PageTokens::for_purpose(
        &edge.env.settings.signing_key().expect("key"),
        "tracking links",
        "token",
    );
    let now = chrono::Utc::now().timestamp();
    let open: TrackingClaim = tracking.decode(&token_of("o")).expect("open claim");
    let unsubscribe: TrackingClaim = tracking.decode(&token_of("u")).expect("unsubscribe claim");
    assert!((open.expires - (now + 90 * 86_400)).abs() < 600, "{open:?}");
    assert!(
        (unsubscribe.expires - (now + 365 * 86_400)).abs() < 600,
        "{unsubscribe:?}"
    );
    assert_eq!(leaked(token_of("u").as_bytes()), Vec::<String>::new());

    // An expired link counts nothing.
    let expired = tracking
        .encode(&TrackingClaim {
            expires: now - 1,
            ..open.clone()
        })
        .expect("encode");
    let (status, _, body) = edge
        .call(reqwest::Method::GET, &format!("/t/o/{expired}"), None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("LINK_EXPIRED"), "{body}");
    let (status, _, _) = edge
        .call(
            reqwest::Method::GET,
            &format!("/t/o/{}", token_of("o")),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a live link still counts");

    // Neither the confirmation page nor the one-click POST names the address.
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = edge
            .http
            .request(
                method.clone(),
                format!("{}/t/u/{}", edge.base, token_of("u")),
            )
            .send()
            .await
            .expect("unsubscribe");
        assert_eq!(response.status(), StatusCode::OK);
        let page = response.bytes().await.expect("page");
        assert_eq!(leaked(&page), Vec::<String>::new(), "{method}: {page:?}");
    }
    let expired_unsubscribe = tracking
        .encode(&TrackingClaim {
            kind: LinkKind::Unsubscribe,
            expires: now - 1,
            ..unsubscribe
        })
        .expect("encode");
    let (status, _, _) = edge
        .call(
            reqwest::Method::POST,
            &format!("/t/u/{expired_unsubscribe}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431_and_the_bearer_scheme_is_case_insensitive() {
    let edge = Edge::start(|_| {}).await;
    let admin = edge.token("acme", &["admin"]);
    let get = |authorization: String, junk: usize| {
        edge.http
            .get(format!("{}/v1/leads", edge.base))
            .header("authorization", authorization)
            .header("x-junk", "j".repeat(junk))
            .send()
    };
    let response = get(format!("Bearer {admin}"), 40 * 1024)
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(violated(&body), vec!["headers".to_owned()]);
    let response = get(format!("Bearer {admin}"), 8 * 1024)
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);

    for scheme in ["Bearer ", "bearer ", "BEARER ", "bEaReR ", "Bearer    "] {
        let response = get(format!("{scheme}{admin}"), 1).await.expect("send");
        assert_eq!(response.status(), StatusCode::OK, "{scheme:?}");
    }
    let response = get(format!("Basic {admin}"), 1).await.expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
