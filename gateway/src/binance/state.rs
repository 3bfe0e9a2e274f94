//! The Binance API's own state, held in [`crate::state::AppState`] (so
//! the shared state needs no router): request weights, client order ids
//! and the user data streams' listen keys.
//!
//! Listen keys live in memory only: after a restart a client's key is
//! unknown (-1125) and the client creates a new one, as it does when
//! Binance expires a key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use engine_core::UserId;
use hyper::StatusCode;

use super::error::BinanceError;

/// How long a listen key lives after its creation or last keepalive
/// (Binance's 60 minutes).
pub const LISTEN_KEY_VALIDITY_MS: u64 = 60 * 60 * 1_000;
/// The length of a listen key (Binance's keys have 60 characters).
pub const LISTEN_KEY_LEN: usize = 60;

/// What the Binance API keeps between requests: the source of generated
/// client order ids and each client address's request weight.
pub struct State {
    client_id_prefix: String,
    client_ids_issued: AtomicU64,
    weight_limit_per_minute: u64,
    weights: Mutex<HashMap<IpAddr, (u64, u64)>>,
    /// Weight used since the start, refused requests' included (`/metrics`).
    weight_used: AtomicU64,
    /// Every live listen key: its user and when it expires (ms since the
    /// epoch). One key per user, so the table is bounded by the users.
    listen_keys: Mutex<HashMap<String, (UserId, u64)>>,
}

/// Client addresses remembered before the weight table is swept.
const WEIGHT_TABLE_MAX: usize = 100_000;

impl State {
    pub fn new(weight_limit_per_minute: u64) -> State {
        // Random per process, so ids never repeat across restarts.
        let client_id_prefix = crate::auth::random_alphanumeric(8).unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{:08x}", nanos as u32)
        });
        State {
            client_id_prefix,
            client_ids_issued: AtomicU64::new(0),
            weight_limit_per_minute,
            weights: Mutex::new(HashMap::new()),
            weight_used: AtomicU64::new(0),
            listen_keys: Mutex::new(HashMap::new()),
        }
    }

    /// A client order id for an order sent without one (Binance generates
    /// one too): unique among this process's orders, at most 22 characters.
    pub fn next_client_order_id(&self) -> String {
        let n = self.client_ids_issued.fetch_add(1, Ordering::Relaxed);
        let mut digits = Vec::new();
        let mut rest = n;
        loop {
            digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(rest % 36) as usize]);
            rest /= 36;
            if rest == 0 {
                break;
            }
        }
        digits.reverse();
        format!("x{}{}", self.client_id_prefix, String::from_utf8_lossy(&digits))
    }

    /// Adds `weight` to `address`'s use in the current minute; the total,
    /// or the error once it is over the limit.
    pub fn use_weight(&self, address: IpAddr, weight: u64, now_ms: u64) -> Result<u64, BinanceError> {
        let minute = now_ms / 60_000;
        self.weight_used.fetch_add(weight, Ordering::Relaxed);
        let Ok(mut weights) = self.weights.lock() else { return Ok(weight) };
        if weights.len() >= WEIGHT_TABLE_MAX {
            weights.retain(|_, (m, _)| *m == minute);
        }
        let entry = weights.entry(address).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += weight;
        if entry.1 > self.weight_limit_per_minute {
            let retry_after_s = (60_000 - now_ms % 60_000).div_ceil(1_000);
            return Err(BinanceError::too_much_weight(self.weight_limit_per_minute, retry_after_s));
        }
        Ok(entry.1)
    }

    /// Request weight used since the start.
    pub fn weight_used(&self) -> u64 {
        self.weight_used.load(Ordering::Relaxed)
    }

    pub fn weight_limit_per_minute(&self) -> u64 {
        self.weight_limit_per_minute
    }

    /// `user`'s listen key, valid for [`LISTEN_KEY_VALIDITY_MS`] from now: the
    /// live one if there is one (Binance extends and returns it), else a new one.
    pub fn open_listen_key(&self, user: UserId, now_ms: u64) -> Result<String, BinanceError> {
        let mut keys =
            self.listen_keys.lock().map_err(|_| BinanceError::internal("listen keys unavailable"))?;
        let expires_ms = now_ms + LISTEN_KEY_VALIDITY_MS;
        if let Some((key, entry)) =
            keys.iter_mut().find(|(_, (owner, until))| *owner == user && *until > now_ms)
        {
            entry.1 = expires_ms;
            return Ok(key.clone());
        }
        keys.retain(|_, (owner, _)| *owner != user);
        let key = crate::auth::random_alphanumeric(LISTEN_KEY_LEN).map_err(BinanceError::from)?;
        keys.insert(key.clone(), (user, expires_ms));
        Ok(key)
    }

    /// Extends `user`'s listen key `key` by [`LISTEN_KEY_VALIDITY_MS`] from now.
    pub fn keep_listen_key(&self, user: UserId, key: &str, now_ms: u64) -> Result<(), BinanceError> {
        let mut keys =
            self.listen_keys.lock().map_err(|_| BinanceError::internal("listen keys unavailable"))?;
        match keys.get_mut(key) {
            Some((owner, until)) if *owner == user && *until > now_ms => {
                *until = now_ms + LISTEN_KEY_VALIDITY_MS;
                Ok(())
            }
            _ => Err(unknown_listen_key()),
        }
    }

    /// Closes `user`'s listen key `key`.
    pub fn close_listen_key(&self, user: UserId, key: &str, now_ms: u64) -> Result<(), BinanceError> {
        let mut keys =
            self.listen_keys.lock().map_err(|_| BinanceError::internal("listen keys unavailable"))?;
        match keys.get(key) {
            Some((owner, until)) if *owner == user && *until > now_ms => {
                keys.remove(key);
                Ok(())
            }
            _ => Err(unknown_listen_key()),
        }
    }

    /// The user of a live listen key.
    pub fn listen_key_user(&self, key: &str, now_ms: u64) -> Option<UserId> {
        let keys = self.listen_keys.lock().ok()?;
        keys.get(key).filter(|(_, until)| *until > now_ms).map(|(user, _)| *user)
    }

    /// Removes and returns the keys that expired by `now_ms`.
    pub fn expire_listen_keys(&self, now_ms: u64) -> Vec<String> {
        let Ok(mut keys) = self.listen_keys.lock() else { return Vec::new() };
        let expired: Vec<String> =
            keys.iter().filter(|(_, (_, until))| *until <= now_ms).map(|(key, _)| key.clone()).collect();
        for key in &expired {
            keys.remove(key);
        }
        expired
    }
}

/// Whether `name` has the shape of a listen key (and so is no stream name).
pub fn looks_like_listen_key(name: &str) -> bool {
    name.len() == LISTEN_KEY_LEN && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn unknown_listen_key() -> BinanceError {
    BinanceError::new(StatusCode::BAD_REQUEST, -1125, "This listenKey does not exist.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_counted_per_address_and_minute() {
        let state = State::new(10);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert_eq!(state.use_weight(a, 6, 60_000), Ok(6));
        let over = state.use_weight(a, 5, 61_000).unwrap_err();
        assert_eq!((over.code, over.status.as_u16(), over.retry_after_s), (-1003, 429, Some(59)));
        assert_eq!(state.use_weight(b, 5, 61_000), Ok(5), "another address has its own budget");
        assert_eq!(state.use_weight(a, 5, 120_000), Ok(5), "a new minute starts afresh");
    }

    #[test]
    fn a_listen_key_is_one_per_user_extended_by_keepalives_and_expires() {
        let state = State::new(6_000);
        let (alice, bob) = (UserId(1), UserId(2));
        let key = state.open_listen_key(alice, 0).unwrap();
        assert!(looks_like_listen_key(&key), "{key}");
        assert_eq!(state.open_listen_key(alice, 1_000).unwrap(), key, "the live key is returned again");
        assert_eq!(state.listen_key_user(&key, 1_000), Some(alice));
        let refused = state.keep_listen_key(bob, &key, 2_000).unwrap_err();
        assert_eq!(
            (refused.code, refused.status.as_u16()),
            (-1125, 400),
            "another user's key is unknown to him"
        );
        assert!(state.close_listen_key(bob, &key, 2_000).is_err());
        // Opened again at 1 s, kept alive at 50 minutes: it lives 60 more.
        state.keep_listen_key(alice, &key, 50 * 60_000).unwrap();
        assert_eq!(state.listen_key_user(&key, 1_000 + LISTEN_KEY_VALIDITY_MS), Some(alice));
        assert!(state.expire_listen_keys(50 * 60_000 + LISTEN_KEY_VALIDITY_MS - 1).is_empty());
        assert_eq!(state.expire_listen_keys(50 * 60_000 + LISTEN_KEY_VALIDITY_MS), vec![key.clone()]);
        assert_eq!(state.listen_key_user(&key, 0), None, "gone once expired");
        assert!(state.keep_listen_key(alice, &key, 0).is_err());
        let second = state.open_listen_key(alice, 0).unwrap();
        assert_ne!(second, key, "a new key after expiry");
        state.close_listen_key(alice, &second, 1).unwrap();
        assert_eq!(state.listen_key_user(&second, 1), None);
    }

    #[test]
    fn generated_client_order_ids_are_valid_and_distinct() {
        let state = State::new(10);
        let ids: std::collections::HashSet<String> =
            (0..1_000).map(|_| state.next_client_order_id()).collect();
        assert_eq!(ids.len(), 1_000);
        assert!(ids.iter().all(|id| engine_core::ClientOrderId::new(id).is_ok() && id.len() <= 22));
    }
}
