//! The engine's limits: the one piece of configuration that shapes its output.

use serde::{Deserialize, Serialize};

/// Bounds on everything the engine holds. They are part of the state (a
/// snapshot carries them, and the state hash covers them) and change only
/// by a journaled [`Command::SetLimits`](crate::Command::SetLimits), so
/// that a replay anywhere, by any tool, makes the same decisions as the
/// live engine. A lowered limit applies to what comes next: state already
/// above it stays. Missing fields take their defaults when read from a
/// configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineLimits {
    pub open_orders_per_user_max: u32,
    /// Resting orders across all markets.
    pub orders_max: u32,
    pub assets_max: u32,
    pub markets_max: u32,
    pub users_max: u32,
    pub api_keys_per_user_max: u32,
}

impl Default for EngineLimits {
    fn default() -> EngineLimits {
        EngineLimits {
            open_orders_per_user_max: 1_000,
            orders_max: 10_000_000,
            assets_max: 4_096,
            markets_max: 4_096,
            users_max: 100_000_000,
            api_keys_per_user_max: 10,
        }
    }
}
