//! `aida health`: asks a running process whether it serves, for container health checks
//! (Docker `HEALTHCHECK`, compose and Swarm `healthcheck`) and operators.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `address` with a scheme (`http://` when it has none).
fn url_of(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// Whether `address` is a URL with a path: checked with an HTTP GET, not gRPC health.
pub fn is_http(address: &str) -> bool {
    reqwest::Url::parse(&url_of(address))
        .is_ok_and(|url| !url.path().is_empty() && url.path() != "/")
}

/// `SERVING` (or the HTTP answer) when `address` serves; an error naming what it said
/// otherwise. `address` is `host:port` or `http(s)://host:port` for gRPC health, or a URL
/// with a path for an HTTP GET that must answer 200.
pub async fn check(
    address: &str,
    service: &str,
    tls: Option<Arc<aida_core::tls::MeshTls>>,
    peer: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let url = url_of(address);
    reqwest::Url::parse(&url)
        .with_context(|| format!("address {address}: not host:port or a URL"))?;
    if is_http(address) {
        return http_check(&url, timeout).await;
    }
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("address {address}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = match (&tls, peer) {
        (Some(tls), Some(peer)) => aida_core::tls::channel(tls, endpoint, peer)?,
        (Some(_), None) => bail!("mutual TLS needs the identity the server must prove"),
        (None, _) => endpoint.connect_lazy(),
    };
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{url}: health check failed: {:?} {}",
                status.code(),
                status.message()
            )
        })?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    let subject = if service.is_empty() {
        url.clone()
    } else {
        format!("{url} {service}")
    };
    match status {
        ServingStatus::Serving => Ok(format!("{subject}: SERVING")),
        other => bail!("{subject}: {}", other.as_str_name()),
    }
}

async fn http_check(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let response = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("{url}: no answer"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let summary = body.lines().next().unwrap_or_default().chars().take(200);
    let summary: String = summary.collect();
    if status.is_success() {
        Ok(format!("{url}: {status} {summary}"))
    } else {
        bail!("{url}: {status} {summary}")
    }
}
