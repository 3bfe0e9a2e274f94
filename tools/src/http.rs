//! A small blocking HTTP/1.1 client for talking to the exchange's admin
//! API: one request per connection, JSON in and out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// `http://host:port` (no TLS: the admin API is for loopback or a private network).
pub struct Server {
    authority: String,
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
        Ok(Server { authority: authority.to_string() })
    }

    /// Sends one request; returns the status and the JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let body = body.to_string();
        let mut stream = TcpStream::connect(&self.authority)
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.authority,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("the server's answer has no header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("the server's answer has no status: {head:?}"))?;
        let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        Ok((status, value))
    }
}
