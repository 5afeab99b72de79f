//! `grpc.health.v1.Health` as the health-checking protocol specifies it
//! (<https://github.com/grpc/grpc/blob/master/doc/health-checking.md>).
//!
//! tonic-health's server answers `Watch` for a service it does not know with `NOT_FOUND`;
//! the protocol says the stream must instead send `SERVICE_UNKNOWN` and stay open, then
//! send the service's status when it becomes known (a client may watch a service before
//! the server registers it). `Check` of an unknown service is `NOT_FOUND`, as specified.
//! The generated messages and service trait are tonic-health's.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A stream that ends when the engine stops (a watcher never would).
pub(super) struct UntilStopped<S> {
    pub(super) inner: S,
    pub(super) stopped: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl<S: Stream + Unpin> Stream for UntilStopped<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if self.stopped.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Watched names of unknown services kept before the ones nobody watches any more are
/// forgotten (a client can watch any name; the table must not grow without bound).
const UNKNOWN_KEPT: usize = 64;

/// The serving status of each service, shared by the engine (which sets them) and the
/// `Health` service (which reports them). A service watched before it is known has an
/// entry in [`ServingStatus::ServiceUnknown`]; for `Check` that is the same as no entry.
#[derive(Clone, Default, Debug)]
pub struct HealthStatuses {
    services: Arc<Mutex<HashMap<String, watch::Sender<ServingStatus>>>>,
}

impl HealthStatuses {
    fn services(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<ServingStatus>>> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Set the status of `service` (`""` is the whole server); its watchers are told.
    pub fn set(&self, service: &str, status: ServingStatus) {
        let mut services = self.services();
        match services.get(service) {
            Some(sender) => {
                sender.send_replace(status);
            }
            None => {
                services.insert(service.to_owned(), watch::Sender::new(status));
            }
        }
    }

    /// The status of `service`, `None` if it is not known.
    pub fn get(&self, service: &str) -> Option<ServingStatus> {
        let status = *self.services().get(service)?.borrow();
        (status != ServingStatus::ServiceUnknown).then_some(status)
    }

    /// A receiver of `service`'s status; for an unknown service its first value is
    /// `SERVICE_UNKNOWN`, and it sees the status [`set`](Self::set) gives it later.
    fn subscribe(&self, service: &str) -> watch::Receiver<ServingStatus> {
        let mut services = self.services();
        if let Some(sender) = services.get(service) {
            return sender.subscribe();
        }
        let unknown = services
            .values()
            .filter(|s| *s.borrow() == ServingStatus::ServiceUnknown)
            .count();
        if unknown >= UNKNOWN_KEPT {
            services.retain(|_, s| {
                *s.borrow() != ServingStatus::ServiceUnknown || s.receiver_count() > 0
            });
        }
        let sender = watch::Sender::new(ServingStatus::ServiceUnknown);
        let receiver = sender.subscribe();
        services.insert(service.to_owned(), sender);
        receiver
    }
}

/// The `grpc.health.v1.Health` service over [`HealthStatuses`]. Its `Watch` streams end
/// when `stopping` turns true (the engine stops), since their clients never would.
#[derive(Debug)]
pub struct HealthService {
    statuses: HealthStatuses,
    stopping: watch::Receiver<bool>,
}

impl HealthService {
    /// The tonic service.
    pub fn server(statuses: HealthStatuses, stopping: watch::Receiver<bool>) -> HealthServer<Self> {
        HealthServer::new(Self { statuses, stopping })
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.statuses.get(service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!(
                "unknown service {service:?} (this server reports \"\" and the services it serves)"
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let receiver = self.statuses.subscribe(&request.get_ref().service);
        let mut stopping = self.stopping.clone();
        let stopped = Box::pin(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        let statuses =
            tokio_stream::wrappers::WatchStream::new(receiver).map(|status| Ok(response(status)));
        Ok(Response::new(Box::pin(UntilStopped {
            inner: statuses,
            stopped,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(statuses: &HealthStatuses) -> (HealthService, watch::Sender<bool>) {
        let (stop, stopping) = watch::channel(false);
        (
            HealthService {
                statuses: statuses.clone(),
                stopping,
            },
            stop,
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn asked(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    #[test]
    fn watch_of_an_unknown_service_streams_service_unknown_then_its_status() {
        let statuses = HealthStatuses::default();
        let (svc, stop) = service(&statuses);
        rt().block_on(async {
            let mut stream = svc.watch(asked("later")).await.unwrap().into_inner();
            let first = stream.next().await.unwrap().unwrap();
            assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
            // Still unknown to Check, as the protocol says.
            let code = svc.check(asked("later")).await.unwrap_err().code();
            assert_eq!(code, tonic::Code::NotFound);
            statuses.set("later", ServingStatus::Serving);
            let next = stream.next().await.unwrap().unwrap();
            assert_eq!(next.status, ServingStatus::Serving as i32);
            assert_eq!(
                svc.check(asked("later")).await.unwrap().into_inner().status,
                ServingStatus::Serving as i32
            );
            stop.send_replace(true);
            assert!(stream.next().await.is_none());
        });
    }

    #[test]
    fn unknown_names_nobody_watches_are_forgotten() {
        let statuses = HealthStatuses::default();
        statuses.set("", ServingStatus::Serving);
        for i in 0..3 * UNKNOWN_KEPT {
            drop(statuses.subscribe(&format!("nobody-{i}")));
        }
        let kept = statuses.services().len();
        assert!(kept <= UNKNOWN_KEPT + 2, "{kept} entries");
        assert_eq!(statuses.get(""), Some(ServingStatus::Serving));
    }
}
