//! `aida release`: blue-green switches through the edges' ReleaseService.

use std::net::SocketAddr;

use aida_proto::aida::release::v1::release_service_client::ReleaseServiceClient;
use aida_proto::aida::release::v1::{
    Color, GetReleaseStatusRequest, ReleaseStatus, SwitchColorRequest,
};
use anyhow::{Context, bail};

/// `blue` or `green` as the contract spells it.
pub fn color(name: &str) -> anyhow::Result<Color> {
    match name {
        "blue" => Ok(Color::Blue),
        "green" => Ok(Color::Green),
        other => bail!("unknown colour '{other}': blue or green"),
    }
}

fn name(color: i32) -> &'static str {
    match Color::try_from(color) {
        Ok(Color::Blue) => "blue",
        Ok(Color::Green) => "green",
        _ => "unspecified",
    }
}

/// Every address `edges` name (a name may resolve to several).
async fn addresses(edges: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut found = Vec::new();
    for edge in edges {
        let edge = edge
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(edge)
            .await
            .with_context(|| format!("--edge {edge}: not host:port, or it does not resolve"))?
            .collect();
        if resolved.is_empty() {
            bail!("--edge {edge} resolves to no address");
        }
        for address in resolved {
            if !found.contains(&address) {
                found.push(address);
            }
        }
    }
    Ok(found)
}

fn describe(edge: SocketAddr, status: &ReleaseStatus) -> Vec<String> {
    let mut lines = vec![format!("edge {edge}: active {}", name(status.active))];
    if status.drained_calls > 0 || !status.drained {
        lines.push(format!(
            "  drained {} call(s) in flight on the previous colour{}",
            status.drained_calls,
            if status.drained {
                ""
            } else {
                " (some still unanswered at the timeout)"
            }
        ));
    }
    for instance in &status.instances {
        lines.push(format!(
            "  {:<5} {:<9} {} {}",
            name(instance.color),
            instance.service,
            instance.url,
            if instance.serving {
                "SERVING"
            } else {
                "NOT_SERVING"
            }
        ));
    }
    lines
}

/// Switches (when `to` is given) or reads every edge, in order; the first refusal stops
/// it, naming the edges already switched.
pub async fn run(edges: &[String], token: &str, to: Option<Color>) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut switched = Vec::new();
    for edge in addresses(edges).await? {
        let mut client = ReleaseServiceClient::connect(format!("http://{edge}"))
            .await
            .with_context(|| format!("edge {edge}: cannot connect"))?;
        let status = match to {
            Some(color) => {
                let mut request = tonic::Request::new(SwitchColorRequest {
                    color: color as i32,
                });
                authorize(&mut request, token)?;
                client.switch_color(request).await
            }
            None => {
                let mut request = tonic::Request::new(GetReleaseStatusRequest {});
                authorize(&mut request, token)?;
                client.get_release_status(request).await
            }
        };
        match status {
            Ok(status) => {
                lines.extend(describe(edge, status.get_ref()));
                switched.push(edge.to_string());
            }
            Err(status) => {
                let done = if to.is_some() && !switched.is_empty() {
                    format!(" (already switched: {})", switched.join(", "))
                } else {
                    String::new()
                };
                bail!(
                    "edge {edge}: {:?}: {}{done}",
                    status.code(),
                    status.message()
                );
            }
        }
    }
    Ok(lines)
}

fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> anyhow::Result<()> {
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    );
    Ok(())
}
