//! The Binance API's own state, held in [`crate::state::AppState`] (so
//! the shared state needs no router): request weights and client order ids.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::BinanceError;

/// What the Binance API keeps between requests: the source of generated
/// client order ids and each client address's request weight.
pub struct State {
    client_id_prefix: String,
    client_ids_issued: AtomicU64,
    weight_limit_per_minute: u64,
    weights: Mutex<HashMap<IpAddr, (u64, u64)>>,
    /// Weight used since the start, refused requests' included (`/metrics`).
    weight_used: AtomicU64,
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
    fn generated_client_order_ids_are_valid_and_distinct() {
        let state = State::new(10);
        let ids: std::collections::HashSet<String> =
            (0..1_000).map(|_| state.next_client_order_id()).collect();
        assert_eq!(ids.len(), 1_000);
        assert!(ids.iter().all(|id| engine_core::ClientOrderId::new(id).is_ok() && id.len() <= 22));
    }
}
