//! Authentication: every service verifies the caller's bearer JWT itself (zero trust: the
//! edge verifies it too, and forwards it unchanged) and reads tenant, subject and roles.
//!
//! The algorithm is pinned (a token naming another one, `none` included, is refused), and
//! `iss`, `aud`, `exp` and `sub` are required.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::error::Error;

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The role that runs the platform (ReleaseService), whatever tenant its token names. It
/// is only honoured on tokens signed with the mesh's own key (`auth.signing_key`, as `aida
/// release` mints them), never on an identity provider's.
pub const PLATFORM_ROLE: &str = "operator";

/// The roles the mesh knows. `operator` is no tenant's role (see [`PLATFORM_ROLE`]).
pub const ROLES: [&str; 7] = [
    "admin",
    "manager",
    "sales_rep",
    "analyst",
    "viewer",
    "service",
    "operator",
];

/// Who is calling, for which tenant: put into every authenticated request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    pub tenant_id: String,
    pub subject: String,
    pub roles: Vec<String>,
    /// `x-request-id` of the call (generated when the caller sent none).
    pub request_id: String,
    /// W3C `traceparent` of the call, when present.
    pub traceparent: Option<String>,
    /// The raw bearer token, to forward on calls this request makes to other services.
    pub token: String,
}

impl AuthContext {
    /// The same context with `roles` instead (tests and role downgrades).
    pub fn with_roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|role| (*role).to_owned()).collect();
        self
    }

    /// The context of work the mesh does by itself (event handlers, tracking links,
    /// periodic jobs) for `tenant`, acting as `subject`.
    pub fn system(
        tenant: &str,
        subject: &str,
        request_id: &str,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            tenant_id: tenant.to_owned(),
            subject: subject.to_owned(),
            roles: vec!["service".to_owned()],
            request_id: if request_id.is_empty() {
                uuid::Uuid::now_v7().to_string()
            } else {
                request_id.to_owned()
            },
            traceparent,
            token: String::new(),
        }
    }

    /// `message` as a call to another service on this caller's behalf: their token (so
    /// the peer applies the caller's own rights), request id and trace context.
    pub fn forward<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            metadata.insert("authorization", value);
        }
        if let Ok(value) = self.request_id.parse() {
            metadata.insert("x-request-id", value);
        }
        if let Some(value) = self
            .traceparent
            .as_deref()
            .and_then(|value| value.parse().ok())
        {
            metadata.insert("traceparent", value);
        }
        request
    }

    /// The context of a consumer acting on `event` as `subject`: the event's tenant,
    /// request id and trace, so what it causes is traced back to the call that started it.
    pub fn for_event(event: &aida_proto::aida::events::v1::EventEnvelope, subject: &str) -> Self {
        Self::system(
            &event.tenant_id,
            subject,
            &event.request_id,
            event.trace.as_ref().map(|trace| trace.traceparent.clone()),
        )
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|held| held == role)
    }

    /// The authenticated context of `request`, or UNAUTHENTICATED if the server forgot the
    /// interceptor (a bug, but one that must fail closed).
    pub fn of<T>(request: &Request<T>) -> Result<&AuthContext, Status> {
        request
            .extensions()
            .get::<AuthContext>()
            .ok_or_else(|| Error::Unauthenticated("no credentials".into()).into())
    }

    /// [`AuthContext::of`] a request taken apart: the caller's context and the message.
    pub fn split<T>(request: Request<T>) -> Result<(AuthContext, T), Status> {
        let context = Self::of(&request)?.clone();
        Ok((context, request.into_inner()))
    }
}

/// The claims AIDA-CRM reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant_id: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Where tokens carry the tenant and the roles: a claim name or a dotted path into nested
/// objects (`app_metadata.tenant_id`), as `auth.tenant_claim` and `auth.roles_claim` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPaths {
    pub tenant: String,
    pub roles: String,
}

impl Default for ClaimPaths {
    /// AIDA's own shape: top-level `tenant_id` and `roles`.
    fn default() -> Self {
        Self {
            tenant: "tenant_id".into(),
            roles: "roles".into(),
        }
    }
}

impl ClaimPaths {
    pub fn new(tenant: &str, roles: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            roles: roles.to_owned(),
        }
    }

    /// The claim at `path` (dotted) of `claims`.
    fn find<'a>(
        claims: &'a serde_json::Map<String, serde_json::Value>,
        path: &str,
    ) -> Option<&'a serde_json::Value> {
        let mut segments = path.split('.');
        let mut value = claims.get(segments.next()?)?;
        for segment in segments {
            value = value.as_object()?.get(segment)?;
        }
        Some(value)
    }

    /// Tenant and roles of verified `claims`, or why the token does not grant any.
    fn read(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(String, Vec<String>), String> {
        let tenant = match Self::find(claims, &self.tenant) {
            None => return Err(format!("invalid token: no {} claim", self.tenant)),
            Some(serde_json::Value::String(tenant)) if valid_tenant(tenant) => tenant.clone(),
            Some(_) => return Err(format!("invalid token: bad {} claim", self.tenant)),
        };
        let bad_roles = || format!("invalid token: bad {} claim", self.roles);
        let roles = match Self::find(claims, &self.roles) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(role)) => vec![role.clone()],
            Some(serde_json::Value::Array(roles)) if roles.len() <= 32 => roles
                .iter()
                .map(|role| role.as_str().map(str::to_owned).ok_or_else(bad_roles))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad_roles()),
        };
        Ok((tenant, roles))
    }

    /// `claims` with `tenant` and `roles` written where these paths say.
    fn write(
        &self,
        claims: &mut serde_json::Map<String, serde_json::Value>,
        tenant: &str,
        roles: &[&str],
    ) {
        fn put(
            claims: &mut serde_json::Map<String, serde_json::Value>,
            path: &str,
            value: serde_json::Value,
        ) {
            let mut target = claims;
            let mut segments: Vec<&str> = path.split('.').collect();
            let Some(last) = segments.pop() else { return };
            for segment in segments {
                let entry = target
                    .entry(segment.to_owned())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if !entry.is_object() {
                    *entry = serde_json::Value::Object(Default::default());
                }
                let serde_json::Value::Object(next) = entry else {
                    return;
                };
                target = next;
            }
            target.insert(last.to_owned(), value);
        }
        put(claims, &self.tenant, tenant.into());
        put(claims, &self.roles, roles.into());
    }
}

/// The registered claims every accepted token carries (the rest is read by path).
#[derive(Debug, Deserialize)]
struct RegisteredClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// A token that passed full verification: what it grants and until when.
#[derive(Clone)]
struct Verified {
    tenant_id: String,
    subject: String,
    roles: Vec<String>,
    exp: u64,
    nbf: Option<u64>,
    /// The JWKS generation it was verified against (`None` for HS256).
    generation: Option<u64>,
}

/// How many verified tokens are remembered, and for how long at most.
const VERIFIED_CAPACITY: u64 = 4096;
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Verifies bearer tokens.
///
/// Clients send the same token with every call, and each call crosses the edge and a
/// service that both verify it; signature checks and claim parsing were the largest single
/// cost of a cached read. A token that verified is therefore remembered (by its exact
/// text) for at most a minute: a repeat only re-checks the clock (`exp`, `nbf`), and a
/// changed JWKS invalidates everything verified against the previous key set.
pub struct TokenVerifier {
    hs256: DecodingKey,
    /// `iss` and `aud` of HS256 tokens.
    issuer: String,
    audience: String,
    leeway: u64,
    jwks: Option<Arc<Jwks>>,
    /// `iss` and `aud` of tokens signed by a JWKS key.
    jwks_issuer: String,
    jwks_audience: String,
    claims: ClaimPaths,
    verified: moka::sync::Cache<String, Verified>,
}

/// Algorithms accepted from a JWKS (the key decides which one a token must use).
const JWKS_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why a token was refused, before it becomes UNAUTHENTICATED.
enum Refusal {
    /// Signed by a key the cached JWKS does not hold (yet).
    UnknownKey(String),
    Invalid(String),
}

impl TokenVerifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &SecretString, issuer: &str, audience: &str, leeway: Duration) -> Self {
        Self {
            hs256: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: leeway.as_secs(),
            jwks: None,
            jwks_issuer: issuer.to_owned(),
            jwks_audience: audience.to_owned(),
            claims: ClaimPaths::default(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }

    /// Also accepts RS256/ES256 tokens signed by a key of `jwks`, which must name `issuer`
    /// and `audience` (an identity provider's, not necessarily the HS256 ones).
    pub fn with_jwks(mut self, jwks: Arc<Jwks>, issuer: &str, audience: &str) -> Self {
        self.jwks = Some(jwks);
        self.jwks_issuer = issuer.to_owned();
        self.jwks_audience = audience.to_owned();
        self
    }

    /// Reads tenant and roles where `claims` say (every key source).
    pub fn with_claims(mut self, claims: ClaimPaths) -> Self {
        self.claims = claims;
        self
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let (issuer, audience) = if algorithm == Algorithm::HS256 {
            (&self.issuer, &self.audience)
        } else {
            (&self.jwks_issuer, &self.jwks_audience)
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(&[audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        validation
    }

    fn check(&self, token: &str) -> Result<(String, String, Vec<String>), Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid("token too large".into()));
        }
        if let Some(known) = self.verified.get(token) {
            let now = unix_now();
            let current = known.generation.is_none()
                || known.generation == self.jwks.as_ref().map(|jwks| jwks.generation());
            // Within the validity window, with the same leeway as a full check; outside
            // it, the full check below gives the precise refusal.
            if current
                && now <= known.exp.saturating_add(self.leeway)
                && known
                    .nbf
                    .is_none_or(|nbf| nbf <= now.saturating_add(self.leeway))
            {
                return Ok((known.tenant_id, known.subject, known.roles));
            }
            self.verified.invalidate(token);
        }
        let verified = self.check_signed(token)?;
        self.verified.insert(token.to_owned(), verified.clone());
        Ok((verified.tenant_id, verified.subject, verified.roles))
    }

    /// The full check: header, signature, registered claims, tenant and subject.
    fn check_signed(&self, token: &str) -> Result<Verified, Refusal> {
        let mut generation = None;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| Refusal::Invalid(format!("invalid token: {error}")))?;
        let data = if header.alg == Algorithm::HS256 {
            jsonwebtoken::decode::<RegisteredClaims>(
                token,
                &self.hs256,
                &self.validation(Algorithm::HS256),
            )
        } else {
            let jwks = self
                .jwks
                .as_ref()
                .filter(|_| JWKS_ALGORITHMS.contains(&header.alg))
                .ok_or_else(|| {
                    Refusal::Invalid(format!(
                        "invalid token: algorithm {:?} is not accepted",
                        header.alg
                    ))
                })?;
            let kid = header
                .kid
                .ok_or_else(|| Refusal::Invalid("invalid token: no kid".into()))?;
            generation = Some(jwks.generation());
            let (key, algorithm) = jwks.key(&kid).ok_or(Refusal::UnknownKey(kid))?;
            // The algorithm is the key's, whatever the token claims: no confusion attacks.
            if algorithm != header.alg {
                return Err(Refusal::Invalid(
                    "invalid token: algorithm does not match the key".into(),
                ));
            }
            jsonwebtoken::decode::<RegisteredClaims>(token, &key, &self.validation(algorithm))
        }
        .map_err(|error| Refusal::Invalid(format!("invalid token: {error}")))?;
        let claims = data.claims;
        let (tenant_id, mut roles) = self.claims.read(&claims.rest).map_err(Refusal::Invalid)?;
        if generation.is_some() {
            // The platform's role comes only from the platform's own key: whatever an
            // identity provider's user records say, they run no releases.
            roles.retain(|role| role != PLATFORM_ROLE);
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(Refusal::Invalid("invalid token: bad sub claim".into()));
        }
        Ok(Verified {
            tenant_id,
            subject: claims.sub,
            roles,
            exp: claims.exp,
            nbf: claims.nbf,
            generation,
        })
    }

    /// Verifies `token` with the keys at hand and returns its tenant, subject and roles. A
    /// token signed by an unknown JWKS key is refused, and a refresh of the key set is
    /// started for the next call.
    pub fn verify(&self, token: &str) -> Result<(String, String, Vec<String>), Error> {
        match self.check(token) {
            Ok(verified) => Ok(verified),
            Err(Refusal::UnknownKey(kid)) => {
                if let (Some(jwks), Ok(runtime)) =
                    (self.jwks.clone(), tokio::runtime::Handle::try_current())
                {
                    runtime.spawn(async move { jwks.refresh_if_due().await });
                }
                Err(Error::Unauthenticated(format!(
                    "invalid token: unknown key id {kid}"
                )))
            }
            Err(Refusal::Invalid(message)) => Err(Error::Unauthenticated(message)),
        }
    }

    /// Like [`TokenVerifier::verify`], but an unknown key id first refreshes the JWKS (at
    /// most once per refresh interval) and tries again.
    pub async fn verify_fresh(&self, token: &str) -> Result<(String, String, Vec<String>), Error> {
        match self.check(token) {
            Ok(verified) => Ok(verified),
            Err(Refusal::UnknownKey(kid)) => {
                if let Some(jwks) = &self.jwks
                    && jwks.refresh_if_due().await
                {
                    return self.verify(token);
                }
                Err(Error::Unauthenticated(format!(
                    "invalid token: unknown key id {kid}"
                )))
            }
            Err(Refusal::Invalid(message)) => Err(Error::Unauthenticated(message)),
        }
    }
}

/// The public keys of an identity provider, fetched from its JWKS URL and cached.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: std::sync::RwLock<std::collections::HashMap<String, (DecodingKey, Algorithm)>>,
    last_refresh: tokio::sync::Mutex<Option<std::time::Instant>>,
    min_interval: Duration,
    /// Bumped whenever a fetched key set replaces the cached one.
    generation: std::sync::atomic::AtomicU64,
}

impl Jwks {
    pub fn new(url: &str, min_interval: Duration) -> Self {
        Self {
            url: url.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: std::sync::RwLock::default(),
            last_refresh: tokio::sync::Mutex::new(None),
            min_interval,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.get(kid).cloned()
    }

    /// Fetches the key set now.
    pub async fn refresh(&self) -> Result<usize, Error> {
        let set: jsonwebtoken::jwk::JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| Error::Unavailable(format!("jwks {}: {error}", self.url)))?
            .json()
            .await
            .map_err(|error| Error::Unavailable(format!("jwks {}: {error}", self.url)))?;
        let mut keys = std::collections::HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue;
            };
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(algorithm), _) => Algorithm::from_str(&format!("{algorithm:?}")).ok(),
                (None, jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(curve)) => {
                    match curve.curve {
                        jsonwebtoken::jwk::EllipticCurve::P256 => Some(Algorithm::ES256),
                        jsonwebtoken::jwk::EllipticCurve::P384 => Some(Algorithm::ES384),
                        _ => None,
                    }
                }
                (None, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
                _ => None,
            };
            if let Some(algorithm) =
                algorithm.filter(|algorithm| JWKS_ALGORITHMS.contains(algorithm))
            {
                keys.insert(kid, (key, algorithm));
            }
        }
        let count = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(count)
    }

    /// Which fetched key set is in use; tokens verified against an older one are checked
    /// again.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refreshes unless the last refresh is younger than the minimum interval; true if it
    /// fetched a new set.
    pub async fn refresh_if_due(&self) -> bool {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_interval) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        match self.refresh().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "jwks refresh failed");
                false
            }
        }
    }
}

/// Tenant ids: 1 to 64 letters, digits, `-` or `_`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Mints HS256 tokens (development and tests; production tokens come from the identity
/// provider).
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
    claims: ClaimPaths,
}

impl TokenIssuer {
    pub fn hs256(secret: &SecretString, issuer: &str, audience: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            claims: ClaimPaths::default(),
        }
    }

    /// Writes tenant and roles where `claims` say, so the verifier reads them back.
    pub fn with_claims(mut self, claims: ClaimPaths) -> Self {
        self.claims = claims;
        self
    }

    /// A token for `subject` in `tenant` with `roles`, valid for `ttl`.
    pub fn mint(
        &self,
        tenant: &str,
        subject: &str,
        roles: &[&str],
        ttl: Duration,
    ) -> Result<String, Error> {
        let now = unix_now();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), subject.into());
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("exp".into(), (now + ttl.as_secs()).into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        self.claims.write(&mut claims, tenant, roles);
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests build expired and malformed tokens with it).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .map_err(Error::internal)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// gRPC paths that need no token: health checks and reflection.
fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Authenticates and authorizes one gRPC call from its path and headers: the
/// [`AuthContext`] of an allowed caller, `None` for a public method, or the refusal.
pub fn authorize(
    verifier: &TokenVerifier,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<Option<AuthContext>, Error> {
    if is_public(path) {
        return Ok(None);
    }
    let token = bearer_token(headers)?;
    let verified = verifier.verify(&token)?;
    permit(path, headers, token, verified).map(Some)
}

/// [`authorize`] for callers that can wait: an unknown JWKS key id refreshes the key set
/// (at most once per interval) before the token is refused.
pub async fn authorize_fresh(
    verifier: &TokenVerifier,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<Option<AuthContext>, Error> {
    if is_public(path) {
        return Ok(None);
    }
    let token = bearer_token(headers)?;
    let verified = verifier.verify_fresh(&token).await?;
    permit(path, headers, token, verified).map(Some)
}

/// Health, reflection and the methods the RBAC table marks public.
pub fn is_public(path: &str) -> bool {
    is_infrastructure(path) || crate::rbac::rule(path) == crate::rbac::Rule::Public
}

/// Checks the verified caller against the RBAC table and builds its context.
fn permit(
    path: &str,
    headers: &http::HeaderMap,
    token: String,
    (tenant_id, subject, roles): (String, String, Vec<String>),
) -> Result<AuthContext, Error> {
    if !crate::rbac::allowed(path, &roles) {
        return Err(Error::PermissionDenied(format!(
            "roles [{}] may not call {}",
            roles.join(", "),
            path.trim_start_matches('/')
        )));
    }
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let request_id = header("x-request-id")
        .filter(|value| !value.is_empty() && value.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    Ok(AuthContext {
        tenant_id,
        subject,
        roles,
        request_id,
        traceparent: header("traceparent").map(str::to_owned),
        token,
    })
}

/// The tower layer every gRPC server of the mesh runs: verifies the bearer token, checks
/// the RBAC table for the called method (deny by default) and stores the [`AuthContext`]
/// in the request. Health, reflection and public methods pass without a token.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service answers this call; a clone takes its place for the next one.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            // An unknown JWKS key id refreshes the key set before the token is refused, so
            // the first call after a key rotation is not lost.
            match authorize_fresh(&verifier, request.uri().path(), request.headers()).await {
                Ok(Some(context)) => {
                    crate::audit::identify(&context.tenant_id, &context.subject, &context.roles);
                    request.extensions_mut().insert(context);
                }
                Ok(None) => {}
                Err(error) => {
                    // A valid token without the right: the refusal's record names who.
                    if matches!(error, Error::PermissionDenied(_))
                        && let Ok(token) = bearer_token(request.headers())
                        && let Ok((tenant, subject, roles)) = verifier.verify(&token)
                    {
                        crate::audit::identify(&tenant, &subject, &roles);
                    }
                    return Ok(Status::from(error).into_http());
                }
            }
            ready.call(request).await
        })
    }
}

/// The bearer token of the `authorization` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<String, Error> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| Error::Unauthenticated("missing bearer token".into()))?;
    let value = value
        .to_str()
        .map_err(|_| Error::Unauthenticated("malformed authorization header".into()))?;
    // RFC 7235: the scheme is case-insensitive and followed by one or more spaces.
    let not_bearer = || Error::Unauthenticated("authorization is not a bearer token".into());
    let (scheme, token) = value
        .trim()
        .split_once([' ', '\t'])
        .ok_or_else(not_bearer)?;
    let token = token.trim_start_matches([' ', '\t']);
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(not_bearer());
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (TokenIssuer, TokenVerifier) {
        let secret = SecretString::from("s".repeat(40));
        (
            TokenIssuer::hs256(&secret, "aida-dev", "aida-crm"),
            TokenVerifier::hs256(&secret, "aida-dev", "aida-crm", Duration::from_secs(5)),
        )
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_with_one_or_more_spaces() {
        let header = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", value.parse().expect("header"));
            bearer_token(&headers)
        };
        for value in [
            "Bearer abc.def",
            "bearer abc.def",
            "BEARER abc.def",
            "bEaReR abc.def",
            "Bearer    abc.def",
            "Bearer\tabc.def",
        ] {
            assert_eq!(header(value).expect(value), "abc.def", "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", "abc.def"] {
            assert!(
                matches!(header(value), Err(Error::Unauthenticated(_))),
                "{value}"
            );
        }
    }

    #[test]
    fn a_minted_token_verifies_with_tenant_subject_and_roles() {
        let (issuer, verifier) = keys();
        let token = issuer
            .mint("acme", "ada", &["sales_rep"], Duration::from_secs(60))
            .expect("mint");
        let (tenant, subject, roles) = verifier.verify(&token).expect("verify");
        assert_eq!((tenant.as_str(), subject.as_str()), ("acme", "ada"));
        assert_eq!(roles, vec!["sales_rep".to_owned()]);
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let secret = SecretString::from("s".repeat(40));
        let issuer = TokenIssuer::hs256(&secret, "aida-dev", "aida-crm");
        let verifier = TokenVerifier::hs256(&secret, "aida-dev", "aida-crm", Duration::ZERO);
        let token = issuer
            .mint("acme", "ada", &["admin"], Duration::from_secs(1))
            .expect("mint");
        verifier.verify(&token).expect("valid now");
        verifier.verify(&token).expect("valid again, from memory");
        // The expiry is in whole seconds: wait until it is strictly past.
        let deadline = unix_now() + 1;
        while unix_now() <= deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let refused = verifier.verify(&token).expect_err("expired");
        assert!(matches!(refused, Error::Unauthenticated(_)), "{refused:?}");
    }

    #[test]
    fn expired_wrong_audience_and_wrong_issuer_tokens_are_refused() {
        let (issuer, verifier) = keys();
        let now = unix_now();
        let base = Claims {
            sub: "ada".into(),
            tenant_id: "acme".into(),
            roles: vec![],
            iss: "aida-dev".into(),
            aud: "aida-crm".into(),
            exp: now + 60,
            iat: None,
            nbf: None,
        };
        let expired = Claims {
            exp: now - 600,
            ..base.clone()
        };
        let wrong_audience = Claims {
            aud: "other".into(),
            ..base.clone()
        };
        let wrong_issuer = Claims {
            iss: "evil".into(),
            ..base.clone()
        };
        let future = Claims {
            nbf: Some(now + 600),
            ..base.clone()
        };
        let bad_tenant = Claims {
            tenant_id: "a/b".into(),
            ..base
        };
        for claims in [expired, wrong_audience, wrong_issuer, future, bad_tenant] {
            let token = issuer.sign(&claims).expect("sign");
            assert!(
                matches!(verifier.verify(&token), Err(Error::Unauthenticated(_))),
                "{claims:?}"
            );
        }
    }

    #[test]
    fn a_token_signed_with_another_key_or_unsigned_is_refused() {
        let (_, verifier) = keys();
        let other = TokenIssuer::hs256(&SecretString::from("x".repeat(40)), "aida-dev", "aida-crm");
        let token = other
            .mint("acme", "ada", &[], Duration::from_secs(60))
            .expect("mint");
        assert!(verifier.verify(&token).is_err());

        // alg "none": header {"alg":"none","typ":"JWT"} with the same claims, no signature.
        let parts: Vec<&str> = token.split('.').collect();
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(verifier.verify(&unsigned).is_err());
    }

    #[test]
    fn tenant_and_roles_are_read_from_the_configured_claim_paths() {
        let secret = SecretString::from("s".repeat(40));
        let paths = ClaimPaths::new("app_metadata.tenant_id", "app_metadata.roles");
        let issuer = TokenIssuer::hs256(&secret, "aida-dev", "aida-crm").with_claims(paths.clone());
        let verifier =
            TokenVerifier::hs256(&secret, "aida-dev", "aida-crm", Duration::from_secs(5))
                .with_claims(paths);
        let token = issuer
            .mint("acme", "ada", &["manager"], Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            verifier.verify(&token).expect("verify"),
            ("acme".into(), "ada".into(), vec!["manager".into()])
        );
        let now = unix_now();
        let sign = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({
                "sub": "ada", "iss": "aida-dev", "aud": "aida-crm", "exp": now + 60,
            });
            claims
                .as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            issuer.sign(&claims).expect("sign")
        };
        // One role as a plain string.
        let single =
            sign(serde_json::json!({"app_metadata": {"tenant_id": "acme", "roles": "viewer"}}));
        assert_eq!(
            verifier.verify(&single).expect("verify").2,
            vec!["viewer".to_owned()]
        );
        // The AIDA shape is not read when the paths point elsewhere.
        let flat = sign(serde_json::json!({"tenant_id": "acme", "roles": ["admin"]}));
        let refused = verifier
            .verify(&flat)
            .expect_err("no tenant where configured");
        assert!(
            matches!(&refused, Error::Unauthenticated(message) if message.contains("app_metadata.tenant_id")),
            "{refused:?}"
        );
        for bad in [
            serde_json::json!({"app_metadata": {"tenant_id": 7}}),
            serde_json::json!({"app_metadata": {"tenant_id": "a/b"}}),
            serde_json::json!({"app_metadata": "acme"}),
            serde_json::json!({"app_metadata": {"tenant_id": "acme", "roles": [1]}}),
            serde_json::json!({"app_metadata": {"tenant_id": "acme", "roles": {"admin": true}}}),
        ] {
            let token = sign(bad.clone());
            assert!(
                matches!(verifier.verify(&token), Err(Error::Unauthenticated(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let (_, verifier) = keys();
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(
            matches!(verifier.verify(&huge), Err(Error::Unauthenticated(message)) if message.contains("too large"))
        );
    }
}
