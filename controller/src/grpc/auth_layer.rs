//! A tower layer in front of every operator service: requests to `dataguardian.v1.*` other than the auth and
//! enrollment services must carry `authorization: Bearer <token>` naming a live session or API token, or they
//! are answered `UNAUTHENTICATED`; the principal must hold the one permission the RPC's table entry names
//! (`super::operator::permission_of`), or it is answered `PERMISSION_DENIED` — an RPC missing from the tables
//! is denied to everyone. Neither reaches a handler. Health and reflection stay open.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tonic::Status;
use tower::{Layer, Service};

use super::operator::{OPEN_SERVICES, permission_of};
use crate::service::auth::AuthService;

/// Whether a request path needs a principal.
pub fn needs_session(path: &str) -> bool {
    match path.strip_prefix("/dataguardian.v1.") {
        Some(rest) => !OPEN_SERVICES.iter().any(|s| rest.strip_prefix(s).is_some_and(|r| r.starts_with('/'))),
        None => false,
    }
}

/// The bearer token of a request's metadata.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The layer.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: AuthService,
}

impl AuthLayer {
    /// New layer.
    pub fn new(auth: AuthService) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware { inner, auth: self.auth.clone() }
    }
}

/// The middleware service.
#[derive(Clone, Debug)]
pub struct AuthMiddleware<S> {
    inner: S,
    auth: AuthService,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthMiddleware<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            if !needs_session(req.uri().path()) {
                return inner.call(req).await;
            }
            let Some(token) = bearer(req.headers()).map(str::to_owned) else {
                return Ok(Status::unauthenticated("missing metadata authorization: Bearer <token>").into_http());
            };
            let principal = match auth.authenticate(&token).await {
                Ok(p) => p,
                Err(e) => return Ok(Status::from(e).into_http()),
            };
            match permission_of(req.uri().path()) {
                Some(p) if principal.can(p) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Some(p) => Ok(Status::permission_denied(format!("permission {} is required", p.name())).into_http()),
                None => Ok(Status::permission_denied("no permission is declared for this call").into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_bearer() {
        assert!(needs_session("/dataguardian.v1.BackupJobService/RunNow"));
        assert!(!needs_session("/dataguardian.v1.AuthService/Login"));
        assert!(!needs_session("/dataguardian.v1.AgentEnrollmentService/Enroll"));
        assert!(!needs_session("/grpc.health.v1.Health/Check"));
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
