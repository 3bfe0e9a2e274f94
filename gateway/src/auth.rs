//! Authentication of signed requests, in the scheme market makers already
//! have code for (Binance's):
//!
//! * the API key in the `X-MBX-APIKEY` header;
//! * `timestamp` (ms since the epoch) and optional `recvWindow` (ms, at most
//!   the configured maximum) as query parameters;
//! * `signature` as the last query parameter: the hex HMAC-SHA256, keyed by
//!   the secret, of the exact query string before `&signature=` followed by
//!   the exact request body.
//!
//! A request outside its receive window is refused, and so is a request
//! that changes state (any method but GET) whose signature was already
//! used: a replay. Reads may repeat within their window. Signatures are compared in constant time. Each key has
//! a token-bucket rate limit. This is the one signing routine every API of
//! the exchange uses.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use engine_core::{ApiKey, ApiSecret, Engine, UserId};
use hmac::{Hmac, KeyInit, Mac};
use replication::ReplayMark;
use sha2::Sha256;

use crate::error::ApiError;

pub const API_KEY_HEADER: &str = "x-mbx-apikey";
/// Binance's default receive window.
const RECV_WINDOW_DEFAULT_MS: u64 = 5_000;
/// How far ahead of the server's clock a timestamp may be.
pub const CLOCK_AHEAD_ALLOWED_MS: u64 = 1_000;
/// Signatures remembered to refuse replays; when full, the oldest go.
const REPLAY_CACHE_MAX: usize = 1 << 20;

/// Which user each API key belongs to, and its secret.
#[derive(Default)]
pub struct KeyTable {
    keys: RwLock<HashMap<ApiKey, (UserId, ApiSecret)>>,
}

impl KeyTable {
    pub fn from_engine(engine: &Engine) -> KeyTable {
        let table = KeyTable::default();
        for entry in engine.api_keys() {
            table.insert(entry.key, entry.user, entry.secret);
        }
        table
    }

    /// Holds exactly `engine`'s keys from now on (a cluster node that
    /// installed a snapshot image: its keys replace whatever was here).
    pub fn replace_from_engine(&self, engine: &Engine) {
        if let Ok(mut keys) = self.keys.write() {
            keys.clear();
            keys.extend(engine.api_keys().iter().map(|entry| (entry.key, (entry.user, entry.secret))));
        }
    }

    pub fn insert(&self, key: ApiKey, user: UserId, secret: ApiSecret) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(key, (user, secret));
        }
    }

    pub fn remove(&self, key: &ApiKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(key);
        }
    }

    fn get(&self, key: &ApiKey) -> Option<(UserId, ApiSecret)> {
        self.keys.read().ok().and_then(|keys| keys.get(key).copied())
    }
}

struct TokenBucket {
    tokens: f64,
    updated_ms: u64,
}

pub struct Authenticator {
    /// Shared with whoever keeps it in step with the engine (a cluster
    /// node's key feed).
    pub keys: Arc<KeyTable>,
    recv_window_max_ms: u64,
    rate_per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<ApiKey, TokenBucket>>,
    /// Signatures of state-changing requests already received. On a
    /// cluster node, also those every leader executed: the committed feed
    /// adds the replay mark of each command it applies.
    seen: SeenSignatures,
    /// State-changing requests signed before this time (ms) are refused:
    /// the replay cache starts empty with the process, so a request the
    /// previous process executed could otherwise be executed again. A
    /// cluster node raises it when it installs an image too: the image
    /// holds the commands, not their signatures.
    signed_after: SignedAfter,
}

/// A signed request that passed: its user and, for a request that changes
/// state, its replay mark (which the command executing it carries into a
/// cluster's log, see [`SeenSignatures`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserId,
    pub replay_mark: Option<ReplayMark>,
}

/// The time (ms since the epoch) before which signed changes are refused,
/// shared with whoever may raise it (a cluster node's committed feed).
#[derive(Clone, Debug, Default)]
pub struct SignedAfter(Arc<std::sync::atomic::AtomicU64>);

impl SignedAfter {
    pub fn ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses requests that may have been executed by the time a command
    /// stamped `last_executed_ms` was: they were received before it, with a
    /// timestamp at most `clock_ahead_ms` ahead of the server's clock.
    /// Never lowers it.
    pub fn refuse_signed_until(&self, last_executed_ms: u64, clock_ahead_ms: u64) {
        let after = last_executed_ms.saturating_add(clock_ahead_ms + 1);
        self.0.fetch_max(after, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The replay cache: signatures of state-changing requests until their
/// window ends, shared between the authenticator and (on a cluster node)
/// the committed feed, which adds the signatures every leader executed.
#[derive(Clone, Default)]
pub struct SeenSignatures(Arc<Mutex<ReplayCache>>);

impl SeenSignatures {
    /// Remembers the signatures of commands executed (a cluster node's
    /// committed entries): the same signed bytes are refused here from now
    /// on, until their window ends. Already seen ones stay as they are.
    pub fn remember(&self, marks: impl IntoIterator<Item = ReplayMark>, now_ms: u64) {
        let Ok(mut cache) = self.0.lock() else { return };
        for mark in marks {
            if mark.expires_ms > now_ms {
                cache.first_use(mark.signature, mark.expires_ms, now_ms);
            }
        }
    }

    /// Whether `signature` is remembered (and still in its window).
    pub fn contains(&self, signature: &[u8; 32]) -> bool {
        self.0.lock().is_ok_and(|cache| cache.seen.contains_key(signature))
    }
}

#[derive(Default)]
struct ReplayCache {
    /// Signature -> when it stops mattering (its timestamp plus window).
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayCache {
    /// Records `signature`; false when it was seen and is still in its window.
    fn first_use(&mut self, signature: [u8; 32], expires_ms: u64, now_ms: u64) -> bool {
        while let Some(&(old, expiry)) = self.order.front() {
            if expiry > now_ms && self.order.len() < REPLAY_CACHE_MAX {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&expiry) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&signature) {
            return false;
        }
        self.seen.insert(signature, expires_ms);
        self.order.push_back((signature, expires_ms));
        true
    }
}

impl Authenticator {
    pub fn new(
        keys: impl Into<Arc<KeyTable>>,
        recv_window_max_ms: u64,
        rate_per_s: u32,
        burst: u32,
    ) -> Authenticator {
        Authenticator {
            keys: keys.into(),
            recv_window_max_ms,
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
            seen: SeenSignatures::default(),
            signed_after: SignedAfter::default(),
        }
    }

    /// Refuses state-changing requests that a previous process may have
    /// executed: `last_journaled_ms` is when the journal's last command was
    /// stamped. Every command executed was received before it was stamped,
    /// with a timestamp at most the allowance ahead of the clock then, so
    /// a request signed later than that cannot have been executed yet.
    pub fn refusing_signed_before(self, last_journaled_ms: u64) -> Authenticator {
        self.signed_after.refuse_signed_until(last_journaled_ms, CLOCK_AHEAD_ALLOWED_MS);
        self
    }

    /// Shares `signed_after` with this authenticator (keeping the higher
    /// of the two times).
    pub fn sharing_signed_after(mut self, signed_after: SignedAfter) -> Authenticator {
        signed_after.0.fetch_max(self.signed_after.ms(), std::sync::atomic::Ordering::AcqRel);
        self.signed_after = signed_after;
        self
    }

    /// Shares `seen` with this authenticator: signatures remembered there
    /// are refused here, and the other way round.
    pub fn sharing_seen_signatures(mut self, seen: SeenSignatures) -> Authenticator {
        self.seen = seen;
        self
    }

    /// Checks a signed request and returns its user. A request that
    /// `changes_state` is refused when its signature was already used (a
    /// replay); a read may be repeated within its window.
    pub fn authenticate(
        &self,
        api_key: Option<&str>,
        raw_query: &str,
        body: &[u8],
        now_ms: u64,
        changes_state: bool,
    ) -> Result<Authenticated, ApiError> {
        let (user, secret) = self.key_holder(api_key, now_ms)?;

        // The signature is the last parameter of the query string or, for
        // a form-encoded body, of the body; the payload is the query string
        // then the body, without the signature (Binance's `totalParams`).
        let body_text = std::str::from_utf8(body).ok();
        let (signed_query, signed_body, signature_hex) = match split_signature(raw_query) {
            Some((query, hex)) => (query, body, hex),
            None => match body_text.and_then(split_signature) {
                Some((body, hex)) if !hex.is_empty() => (raw_query, body.as_bytes(), hex),
                _ => return Err(ApiError::unauthorized(
                    "missing_signature",
                    "the last query parameter (or form body parameter) must be signature=<hex HMAC-SHA256>",
                )),
            },
        };
        let signed_params = if signed_body.len() < body.len() {
            // Form parameters take part too when the signature is in the body.
            query_pairs(signed_query).chain(query_pairs(body_text.unwrap_or("")))
        } else {
            query_pairs(signed_query).chain(query_pairs(""))
        };
        let mut timestamp_ms = None;
        let mut recv_window_ms = RECV_WINDOW_DEFAULT_MS;
        for (name, value) in signed_params {
            match name {
                "timestamp" => {
                    timestamp_ms = Some(value.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(
                            "invalid_timestamp",
                            "timestamp must be milliseconds since the epoch",
                        )
                    })?)
                }
                "recvWindow" => {
                    recv_window_ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|w| *w > 0 && *w <= self.recv_window_max_ms)
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "invalid_recv_window",
                                format!("recvWindow must be 1 to {} milliseconds", self.recv_window_max_ms),
                            )
                        })?
                }
                _ => {}
            }
        }
        let timestamp_ms = timestamp_ms.ok_or_else(|| {
            ApiError::bad_request("missing_timestamp", "the timestamp parameter is required")
        })?;
        if timestamp_ms > now_ms + CLOCK_AHEAD_ALLOWED_MS {
            return Err(ApiError::unauthorized(
                "timestamp_ahead",
                format!("timestamp {timestamp_ms} is ahead of the server's time {now_ms}; check your clock"),
            ));
        }
        if now_ms.saturating_sub(timestamp_ms) > recv_window_ms {
            return Err(ApiError::unauthorized(
                "timestamp_outside_recv_window",
                format!("timestamp {timestamp_ms} is older than recvWindow {recv_window_ms} ms (server time {now_ms})"),
            ));
        }
        let mut signature = [0u8; 32];
        hex::decode_to_slice(signature_hex, &mut signature)
            .map_err(|_| ApiError::unauthorized("invalid_signature", "signature must be 64 hex digits"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .map_err(|_| ApiError::unauthorized("invalid_signature", "signature does not match"))?;
        mac.update(signed_query.as_bytes());
        mac.update(signed_body);
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| ApiError::unauthorized("invalid_signature", "signature does not match"))?;
        if !changes_state {
            return Ok(Authenticated { user, replay_mark: None });
        }
        let signed_after_ms = self.signed_after.ms();
        if timestamp_ms < signed_after_ms {
            return Err(ApiError::unauthorized(
                "signed_before_restart",
                format!(
                    "this request was signed at {timestamp_ms}, before the exchange restarted or this node \
                     caught up from a snapshot image (requests signed before {signed_after_ms} may have been \
                     executed already): look the order up (by its client order id) before signing a new request"
                ),
            ));
        }
        let expires_ms = timestamp_ms + recv_window_ms;
        let first_use = self
            .seen
            .0
            .lock()
            .map(|mut cache| cache.first_use(signature, expires_ms, now_ms))
            .unwrap_or(false);
        if !first_use {
            return Err(ApiError::unauthorized(
                "replayed_signature",
                "this signed request was already received",
            ));
        }
        Ok(Authenticated { user, replay_mark: Some(ReplayMark { signature, expires_ms }) })
    }

    /// The user of an API key, for the endpoints Binance secures by the key
    /// alone (the listen key's `USER_STREAM` endpoints); rate-limited like
    /// a signed request.
    pub fn identify(&self, api_key: Option<&str>, now_ms: u64) -> Result<UserId, ApiError> {
        self.key_holder(api_key, now_ms).map(|(user, _)| user)
    }

    /// The user and secret of an API key, one request taken from the key's
    /// rate budget.
    fn key_holder(&self, api_key: Option<&str>, now_ms: u64) -> Result<(UserId, ApiSecret), ApiError> {
        let api_key = api_key.ok_or_else(|| {
            ApiError::unauthorized("missing_api_key", format!("the {API_KEY_HEADER} header is required"))
        })?;
        let key =
            ApiKey::new(api_key).map_err(|_| ApiError::unauthorized("invalid_api_key", "unknown API key"))?;
        let holder = self
            .keys
            .get(&key)
            .ok_or_else(|| ApiError::unauthorized("invalid_api_key", "unknown API key"))?;
        self.take_token(key, now_ms)?;
        Ok(holder)
    }

    /// State-changing requests signed before this time (ms since the
    /// epoch) are refused (see [`Authenticator::refusing_signed_before`]).
    pub fn signed_after_ms(&self) -> u64 {
        self.signed_after.ms()
    }

    /// Signed requests per second each key may send.
    pub fn rate_per_s(&self) -> f64 {
        self.rate_per_s
    }

    fn take_token(&self, key: ApiKey, now_ms: u64) -> Result<(), ApiError> {
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let bucket = buckets.entry(key).or_insert(TokenBucket { tokens: self.burst, updated_ms: now_ms });
        let elapsed_s = now_ms.saturating_sub(bucket.updated_ms) as f64 / 1_000.0;
        bucket.tokens = (bucket.tokens + elapsed_s * self.rate_per_s).min(self.burst);
        bucket.updated_ms = now_ms;
        if bucket.tokens < 1.0 {
            let wait_s = ((1.0 - bucket.tokens) / self.rate_per_s).ceil().max(1.0) as u64;
            return Err(ApiError::too_many_requests(wait_s));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

/// The signed part of a query and the signature's hex, when `signature` is
/// the last parameter.
fn split_signature(raw_query: &str) -> Option<(&str, &str)> {
    // The last `signature=` is the signature; an earlier parameter of that
    // name is part of what was signed (found by the `signature` fuzz target:
    // `signature=&timestamp=...&signature=<hex>` was read as one long
    // signature and a good request refused).
    let (signed, hex) = match raw_query.rfind("&signature=") {
        Some(at) => (&raw_query[..at], &raw_query[at + "&signature=".len()..]),
        None => ("", raw_query.strip_prefix("signature=")?),
    };
    if hex.contains('&') {
        return None;
    }
    Some((signed, hex))
}

/// Query parameters as raw (undecoded) name/value pairs.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|pair| !pair.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Letters and digits from the operating system's random source: API
/// keys and secrets, and the Binance API's client order id prefix.
pub fn random_alphanumeric(len: usize) -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 128];
    while out.len() < len {
        getrandom::fill(&mut buffer).map_err(|_| {
            ApiError::new(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no randomness available for keys",
            )
        })?;
        // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
        for &byte in buffer.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[usize::from(byte % 62)] as char);
        }
    }
    Ok(out)
}

/// Signs `payload` (query string, then body) with `secret`: what a client does.
pub fn sign(secret: &str, query: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(query.as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key0123456789ABCDEFGH";
    const SECRET: &str = "secret0123456789abcdefghij";

    fn authenticator(burst: u32) -> Authenticator {
        let keys = KeyTable::default();
        keys.insert(ApiKey::new(KEY).unwrap(), UserId(7), ApiSecret::new(SECRET).unwrap());
        Authenticator::new(keys, 60_000, 10, burst)
    }

    fn signed(query: &str, body: &str) -> String {
        format!("{query}&signature={}", sign(SECRET, query, body.as_bytes()))
    }

    #[test]
    fn a_good_signature_names_the_user_once() {
        let auth = authenticator(100);
        let now = 1_700_000_000_000;
        let query = signed(&format!("market=BTC-USDT&timestamp={now}"), "{\"a\":1}");
        assert_eq!(
            auth.authenticate(Some(KEY), &query, b"{\"a\":1}", now + 10, true).map(|a| a.user),
            Ok(UserId(7))
        );
        let replay =
            auth.authenticate(Some(KEY), &query, b"{\"a\":1}", now + 20, true).map(|a| a.user).unwrap_err();
        assert_eq!(replay.code, "replayed_signature");
    }

    /// A change's replay mark is its signature and the end of its window;
    /// a signature remembered from elsewhere (a cluster's committed log) is
    /// refused as a replay, and one past its window is not kept.
    #[test]
    fn a_remembered_signature_is_refused_as_a_replay() {
        let now = 1_700_000_000_000;
        let leader = authenticator(100);
        let query = signed(&format!("timestamp={now}&recvWindow=3000"), "");
        let taken = leader.authenticate(Some(KEY), &query, b"", now + 10, true).unwrap();
        let mark = taken.replay_mark.expect("a change has a replay mark");
        assert_eq!(mark.expires_ms, now + 3_000);
        let read = leader.authenticate(Some(KEY), &signed(&format!("timestamp={now}"), ""), b"", now, false);
        assert_eq!(read.map(|a| a.replay_mark), Ok(None), "a read has none");

        let seen = SeenSignatures::default();
        let follower = authenticator(100).sharing_seen_signatures(seen.clone());
        seen.remember([mark], now + 20);
        assert!(seen.contains(&mark.signature));
        let replay = follower.authenticate(Some(KEY), &query, b"", now + 30, true).unwrap_err();
        assert_eq!(replay.code, "replayed_signature");
        let expired = ReplayMark { signature: [1; 32], expires_ms: now };
        seen.remember([expired], now + 20);
        assert!(!seen.contains(&expired.signature), "a mark past its window is not kept");
    }

    #[test]
    fn a_change_signed_before_a_restart_is_refused() {
        let now = 1_700_000_000_000;
        let auth = authenticator(100).refusing_signed_before(now - CLOCK_AHEAD_ALLOWED_MS - 1);
        let before = signed(&format!("timestamp={}", now - 1), "");
        let error = auth.authenticate(Some(KEY), &before, b"", now + 5, true).map(|a| a.user).unwrap_err();
        assert_eq!(error.code, "signed_before_restart");
        // Reads may be repeated; requests signed since the start go through.
        assert_eq!(auth.authenticate(Some(KEY), &before, b"", now + 5, false).map(|a| a.user), Ok(UserId(7)));
        let after = signed(&format!("timestamp={now}"), "");
        assert_eq!(auth.authenticate(Some(KEY), &after, b"", now + 5, true).map(|a| a.user), Ok(UserId(7)));
    }

    #[test]
    fn every_failure_has_its_code() {
        let auth = authenticator(100);
        let now = 1_700_000_000_000;
        let good = signed(&format!("timestamp={now}"), "");
        let code = |key: Option<&str>, query: &str, body: &[u8], at: u64| {
            auth.authenticate(key, query, body, at, true)
                .map(|a| a.user)
                .map(|_| "ok")
                .unwrap_or_else(|e| e.code)
        };
        assert_eq!(code(None, &good, b"", now), "missing_api_key");
        assert_eq!(code(Some("nobody0123456789ABCD"), &good, b"", now), "invalid_api_key");
        assert_eq!(code(Some("bad key!"), &good, b"", now), "invalid_api_key");
        assert_eq!(code(Some(KEY), &format!("timestamp={now}"), b"", now), "missing_signature");
        assert_eq!(code(Some(KEY), &good, b"tampered", now), "invalid_signature");
        let stale = signed(&format!("timestamp={}", now - 6_000), "");
        assert_eq!(code(Some(KEY), &stale, b"", now), "timestamp_outside_recv_window");
        let ahead = signed(&format!("timestamp={}", now + 5_000), "");
        assert_eq!(code(Some(KEY), &ahead, b"", now), "timestamp_ahead");
        let wide = signed(&format!("timestamp={now}&recvWindow=600000"), "");
        assert_eq!(code(Some(KEY), &wide, b"", now), "invalid_recv_window");
        let no_time = signed("market=X", "");
        assert_eq!(code(Some(KEY), &no_time, b"", now), "missing_timestamp");
        let short = format!("timestamp={now}&signature=abcd");
        assert_eq!(code(Some(KEY), &short, b"", now), "invalid_signature");
    }

    /// The HMAC examples of Binance's REST API documentation: all in the
    /// query, all in the body, and split between the two.
    #[test]
    fn binances_documented_signature_examples_verify() {
        let keys = KeyTable::default();
        let key = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";
        let secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
        keys.insert(ApiKey::new(key).unwrap(), UserId(3), ApiSecret::new(secret).unwrap());
        let auth = Authenticator::new(keys, 60_000, 10, 100);
        let now = 1_499_827_319_559 + 100;
        let all = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        let signature = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";
        assert_eq!(sign(secret, all, b""), signature);
        let in_query = format!("{all}&signature={signature}");
        assert_eq!(auth.authenticate(Some(key), &in_query, b"", now, false).map(|a| a.user), Ok(UserId(3)));
        assert_eq!(
            auth.authenticate(Some(key), "", in_query.as_bytes(), now, false).map(|a| a.user),
            Ok(UserId(3))
        );
        let query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC";
        let body = "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559&signature=0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77";
        assert_eq!(
            auth.authenticate(Some(key), query, body.as_bytes(), now, false).map(|a| a.user),
            Ok(UserId(3))
        );
        // The body's timestamp counts: outside its 5 s window it is refused.
        let late = auth
            .authenticate(Some(key), query, body.as_bytes(), now + 6_000, false)
            .map(|a| a.user)
            .unwrap_err();
        assert_eq!(late.code, "timestamp_outside_recv_window");
        let tampered = body.replace("quantity=1", "quantity=2");
        let refused =
            auth.authenticate(Some(key), query, tampered.as_bytes(), now, false).map(|a| a.user).unwrap_err();
        assert_eq!(refused.code, "invalid_signature");
    }

    #[test]
    fn the_last_signature_parameter_is_the_signature() {
        let auth = authenticator(100);
        let now = 1_700_000_000_000;
        let payload = format!("signature=&timestamp={now}");
        let query = format!("{payload}&signature={}", sign(SECRET, &payload, b""));
        assert_eq!(auth.authenticate(Some(KEY), &query, b"", now, true).map(|a| a.user), Ok(UserId(7)));
        assert_eq!(split_signature("signature=ab"), Some(("", "ab")));
        assert_eq!(split_signature("signature=ab&x=1"), None, "the signature is the last parameter");
    }

    #[test]
    fn the_rate_limit_refills_over_time() {
        let auth = authenticator(3);
        let now = 1_700_000_000_000;
        let query = |i: u64| signed(&format!("timestamp={now}&n={i}"), "");
        for i in 0..3 {
            assert!(auth.authenticate(Some(KEY), &query(i), b"", now, true).map(|a| a.user).is_ok());
        }
        let limited = auth.authenticate(Some(KEY), &query(3), b"", now, true).map(|a| a.user).unwrap_err();
        assert_eq!((limited.code, limited.retry_after_s), ("rate_limited", Some(1)));
        assert!(auth.authenticate(Some(KEY), &query(4), b"", now + 200, true).map(|a| a.user).is_ok());
    }
}
