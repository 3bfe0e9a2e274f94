//! The client `exctl` talks to a running exchange with: its admin API and
//! `/health`, JSON in and out, through `ureq` (kept-alive connections,
//! chunked bodies, a 30 s limit on every request, no redirects followed).

use std::time::Duration;

use serde_json::Value;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `http://host:port` (no TLS: the admin API is for loopback or a private network).
pub struct Server {
    base: String,
    agent: ureq::Agent,
}

impl Server {
    pub fn parse(url: &str) -> Result<Server, String> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http://host:port addresses are supported"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{url:?}: give just http://host:port"));
        }
        let agent = ureq::Agent::config_builder()
            // Statuses are the caller's to judge: the body says why.
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .build()
            .into();
        Ok(Server { base: format!("http://{authority}"), agent })
    }

    /// Sends one request with a JSON body; returns the status and the JSON
    /// body (a body that is not JSON comes back as a string).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.to_string()).map_err(|e| format!("{method} {path}: {e}"))?;
        self.answer(method, path, self.agent.run(request))
    }

    /// `GET path`, no body.
    pub fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.get_with(path, &[])
    }

    /// `GET path` with headers (the admin token), no body.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, Value), String> {
        let mut request = ureq::http::Request::builder().method("GET").uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).map_err(|e| format!("GET {path}: {e}"))?;
        self.answer("GET", path, self.agent.run(request))
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value), String> {
        let mut response = response.map_err(|e| format!("{method} {}{path}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {}{path}: reading the answer: {e}", self.base))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}
