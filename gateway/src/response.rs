//! HTTP answers as both REST APIs build them: the body type, a JSON
//! response, and the headers errors carry (`Retry-After`, `Allow`).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::error::ApiError;

pub type Body = Full<Bytes>;

/// `body`, a JSON text, answered with `status`.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `body`, plain text of `content_type`, answered with `status`.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error in the exchange's own shape, with `Retry-After` when it has
/// one (429).
pub fn api_error(error: &ApiError) -> Response<Body> {
    let mut response = json(error.status, error.body());
    if let Some(seconds) = error.retry_after_s {
        retry_after(&mut response, seconds);
    }
    if let Some(leader) = &error.leader {
        x_leader(&mut response, leader);
    }
    response
}

/// Names the cluster's leader (`HOST:PORT` of its API) to a client that
/// sent order entry to another node.
pub fn x_leader(response: &mut Response<Body>, leader: &str) {
    if let Ok(value) = HeaderValue::from_str(leader) {
        response.headers_mut().insert("x-leader", value);
    }
}

/// Tells the client to retry after `seconds`.
pub fn retry_after(response: &mut Response<Body>, seconds: u64) {
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
}

/// The `Allow` header a 405 must carry: the methods `routes` serve at `path`.
pub fn allow(response: &mut Response<Body>, routes: &[(&str, &str)], path: &str) {
    let methods: Vec<&str> = routes.iter().filter(|(_, p)| *p == path).map(|(m, _)| *m).collect();
    if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
        response.headers_mut().insert(ALLOW, value);
    }
}
