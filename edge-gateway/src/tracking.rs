//! The public tracking links of CommsService (`/t/o`, `/t/c`, `/t/u`): no token, the sealed
//! link is the credential; each call is charged to its client address.

use super::*;

/// 1×1 transparent GIF: the open pixel.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

impl Edge {
    /// What every tracking link does first: charge the call to its address, then reach
    /// TrackingService.
    fn tracking_for(
        &self,
        peer: ClientIp,
    ) -> Result<TrackingServiceClient<upstream::Upstream>, tonic::Status> {
        self.charge_address(Some(peer.0))?;
        self.upstreams
            .channel("aida.comms.v1.TrackingService")
            .map(TrackingServiceClient::new)
            .ok_or_else(|| Error::internal("no comms upstream").into())
    }
}

pub(crate) async fn track_open(
    State(edge): State<Arc<Edge>>,
    axum::Extension(peer): axum::Extension<ClientIp>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut client = match edge.tracking_for(peer) {
        Ok(client) => client,
        Err(status) => return error_response(&edge.pool, &status),
    };
    let user_agent = header_text(&headers, "user-agent").unwrap_or_default();
    match client
        .track_open(TrackOpenRequest {
            token,
            user_agent: user_agent.to_owned(),
        })
        .await
    {
        Ok(_) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "image/gif"),
                (header::CACHE_CONTROL, "no-store, max-age=0"),
            ],
            PIXEL,
        )
            .into_response(),
        Err(status) => error_response(&edge.pool, &status),
    }
}

pub(crate) async fn track_click(
    State(edge): State<Arc<Edge>>,
    axum::Extension(peer): axum::Extension<ClientIp>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut client = match edge.tracking_for(peer) {
        Ok(client) => client,
        Err(status) => return error_response(&edge.pool, &status),
    };
    let user_agent = header_text(&headers, "user-agent").unwrap_or_default();
    match client
        .track_click(TrackClickRequest {
            token,
            user_agent: user_agent.to_owned(),
        })
        .await
    {
        Ok(response) => match HeaderValue::from_str(&response.into_inner().target_url) {
            Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
            Err(_) => error_response(&edge.pool, &Error::internal("bad redirect target").into()),
        },
        Err(status) => error_response(&edge.pool, &status),
    }
}

/// RFC 8058 one-click unsubscribe: a POST unsubscribes.
pub(crate) async fn unsubscribe(
    State(edge): State<Arc<Edge>>,
    axum::Extension(peer): axum::Extension<ClientIp>,
    Path(token): Path<String>,
) -> Response {
    let mut client = match edge.tracking_for(peer) {
        Ok(client) => client,
        Err(status) => return error_response(&edge.pool, &status),
    };
    match client.unsubscribe(UnsubscribeRequest { token }).await {
        // The page names no address: whoever holds a link learns nothing about its recipient.
        Ok(_) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "You are unsubscribed: this address will receive no more messages.\n",
        )
            .into_response(),
        Err(status) => error_response(&edge.pool, &status),
    }
}

/// A GET on the unsubscribe link shows a confirmation: link scanners follow GETs, so a GET
/// never unsubscribes anyone.
pub(crate) async fn unsubscribe_page(Path(token): Path<String>) -> Response {
    let token = transcode_safe(&token);
    let page = format!(
        "<!doctype html><html><body><form method=\"post\" action=\"/t/u/{token}\"><p>Stop receiving these messages?</p>\
         <button type=\"submit\">Unsubscribe</button></form></body></html>"
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// Keeps only token characters, so the page cannot be injected into.
fn transcode_safe(token: &str) -> String {
    token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}
