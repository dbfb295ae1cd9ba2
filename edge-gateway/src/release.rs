//! ReleaseService, served by the edge itself: blue-green switches of where every call
//! goes ([`crate::upstream::Upstreams::switch`]). Behind the same authentication and RBAC
//! as every service (the `operator` role only).

use std::time::Duration;

use aida_core::Error;
use aida_proto::aida::release::v1::release_service_server::ReleaseService;
use aida_proto::aida::release::v1::{
    Color, GetReleaseStatusRequest, Instance, ReleaseStatus, SwitchColorRequest,
};
use tonic::{Request, Response, Status};

use crate::upstream::{self, Upstreams};

pub struct ReleaseApi {
    pub upstreams: Upstreams,
    /// How long a switch waits for the previous colour's calls in flight.
    pub drain: Duration,
}

fn to_proto(color: upstream::Color) -> Color {
    match color {
        upstream::Color::Blue => Color::Blue,
        upstream::Color::Green => Color::Green,
    }
}

impl ReleaseApi {
    fn status(&self, drained_calls: usize, drained: bool) -> ReleaseStatus {
        ReleaseStatus {
            active: to_proto(self.upstreams.active()) as i32,
            instances: self
                .upstreams
                .instances()
                .into_iter()
                .map(|instance| Instance {
                    service: instance.service.to_owned(),
                    color: to_proto(instance.color) as i32,
                    url: instance.url,
                    serving: instance.serving,
                })
                .collect(),
            drained_calls: i64::try_from(drained_calls).unwrap_or(i64::MAX),
            drained,
        }
    }
}

#[tonic::async_trait]
impl ReleaseService for ReleaseApi {
    async fn switch_color(
        &self,
        request: Request<SwitchColorRequest>,
    ) -> Result<Response<ReleaseStatus>, Status> {
        let to = match Color::try_from(request.get_ref().color) {
            Ok(Color::Blue) => upstream::Color::Blue,
            Ok(Color::Green) => upstream::Color::Green,
            _ => return Err(Error::invalid("color", "COLOR_BLUE or COLOR_GREEN").into()),
        };
        let switched = self
            .upstreams
            .switch(to, self.drain)
            .await
            .map_err(|message| Error::FailedPrecondition {
                reason: "DEPLOYMENT_NOT_SERVING",
                message,
            })?;
        Ok(Response::new(
            self.status(switched.drained_calls, switched.drained),
        ))
    }

    async fn get_release_status(
        &self,
        _: Request<GetReleaseStatusRequest>,
    ) -> Result<Response<ReleaseStatus>, Status> {
        Ok(Response::new(self.status(0, true)))
    }
}
