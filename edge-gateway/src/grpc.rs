//! gRPC and grpc-web through the edge: a raw pass-through codec and the proxy that
//! forwards each admitted call (streams and trailers included) to a replica of its service.

use super::*;
use crate::admission::Target;

/// Passes already-encoded messages through tonic unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        destination: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        destination.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(source.copy_to_bytes(source.remaining())))
    }
}

impl Edge {
    /// gRPC and grpc-web, admitted by [`crate::grpc_service`]'s steps: the call is
    /// forwarded (streams and trailers included) to the replica they chose.
    async fn proxy(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let (Some(Target(channel)), Some(_)) = (
            request.extensions().get::<Target>().cloned(),
            request.extensions().get::<Admitted>(),
        ) else {
            return tonic::Status::from(aida_core::Error::internal("call not admitted"))
                .into_http();
        };
        let service = request
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        // grpc-web-text shrinks when decoded, but its body still reports the encoded size;
        // the HTTP/2 client would send that as content-length. Forward the frames without
        // a size hint, and without the empty DATA frames a client may end its stream with:
        // relayed one by one they trip h2's flood guard upstream ("too_many_data_frames").
        let mut request = request.map(|body| {
            tonic::body::Body::new(http_body_util::StreamBody::new(
                http_body_util::BodyStream::new(body).try_filter(|frame| {
                    std::future::ready(!frame.data_ref().is_some_and(|data| data.is_empty()))
                }),
            ))
        });
        request.headers_mut().remove(header::CONTENT_LENGTH);
        // The service continues the trace from the edge's span, not the client's.
        if let Some(traceparent) = aida_core::telemetry::current_traceparent()
            .and_then(|traceparent| http::HeaderValue::from_str(&traceparent).ok())
        {
            request.headers_mut().insert("traceparent", traceparent);
        }
        match channel.oneshot(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%service, error = ?error, "grpc proxy call failed");
                tonic::Status::unavailable(format!("{service}: {error}")).into_http()
            }
        }
    }
}

/// The tower face of [`Edge::proxy`], for the grpc-web layer.
#[derive(Clone)]
pub(crate) struct GrpcProxy(pub(crate) Arc<Edge>);

impl Service<http::Request<tonic::body::Body>> for GrpcProxy {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let edge = self.0.clone();
        Box::pin(async move { Ok(edge.proxy(request).await) })
    }
}
