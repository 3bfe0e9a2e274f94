//! The server's configuration: a typed struct with defaults, read from a
//! TOML file (`--config FILE`) and overridden by `EXCHANGE_*` environment
//! variables. Every setting is documented in the README.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use engine_core::EngineLimits;
use journal::{Durability, SegmentRetention};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the REST API: `IP:PORT` or `HOST:PORT` (resolved at
    /// start; the first IPv4 address if the name has one).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Address of the WebSocket streams, as `listen`.
    #[serde(deserialize_with = "listen_address")]
    pub ws_listen: SocketAddr,
    /// Messages queued for one WebSocket connection; a client further
    /// behind is disconnected.
    pub ws_queue_max: usize,
    /// How long one WebSocket frame may take to be written; a client whose
    /// socket takes nothing for longer is disconnected.
    pub ws_send_timeout_ms: u64,
    /// Holds `journal/`, `snapshots/` and `archive/`.
    pub data_dir: PathBuf,
    /// `none`, `batch` or `interval`.
    pub durability: DurabilityKind,
    /// For `interval`: the most time between syncs.
    pub sync_interval_ms: u64,
    pub segment_bytes: u64,
    /// The most time between two records of the journal's durable sequence
    /// number in `journal/CHECKPOINT` (by a background thread). On start, a
    /// journal that ends before the recorded number is refused.
    pub checkpoint_interval_ms: u64,
    /// A snapshot after this many commands (0: only at shutdown).
    pub snapshot_every_commands: u64,
    pub snapshots_keep: usize,
    /// What to do with segments older than the oldest kept snapshot:
    /// `keep`, `delete` or `archive` (to `data_dir/archive`).
    pub segment_retention: RetentionKind,
    /// Slots of the ring into the matcher (a power of two).
    pub inbound_ring_size: usize,
    /// Slots of the ring of events out of the matcher (a power of two).
    pub outbound_ring_size: usize,
    /// `backoff` (spin, then yield, then sleep: the default, kind to a
    /// laptop) or `busy-spin` (lowest latency; burns a core per thread).
    pub wait_strategy: WaitKind,
    /// Pin the matcher thread to this core.
    pub matcher_core: Option<usize>,
    /// The token admin requests carry in `X-Admin-Token`. Without one the
    /// admin API is disabled.
    pub admin_token: Option<String>,
    pub request_body_max_bytes: usize,
    /// Open HTTP connections at once; more are closed on arrival.
    pub connections_max: usize,
    /// How long a request may wait for the matcher's answer.
    pub request_timeout_ms: u64,
    /// The largest `recvWindow` a signed request may ask for.
    pub recv_window_max_ms: u64,
    /// Signed requests per second per API key (a token bucket).
    pub rate_limit_per_s: u32,
    /// How many requests a key may send at once before the rate applies.
    pub rate_limit_burst: u32,
    /// Request weight one client address may use per minute on the
    /// Binance-compatible API (Binance's own limit is 6,000).
    pub request_weight_per_minute: u64,
    /// Recent trades kept per market in memory (`GET /trade/history`,
    /// `/api/v3/trades`, `aggTrades`), recovered after a restart.
    pub recent_trades_max: usize,
    /// ... and for at most this long (measured in the journal's time).
    pub recent_trades_kept_ms: u64,
    /// Closed orders kept per user in memory (`GET /order`,
    /// `/api/v3/order`, `myTrades`), recovered after a restart. Older ones
    /// are served from PostgreSQL when it is configured.
    pub closed_orders_kept_per_user: usize,
    /// ... and for at most this long after they closed.
    pub closed_orders_kept_ms: u64,
    /// PostgreSQL to write history to and serve it from (a tokio-postgres
    /// connection string, URL or key=value form). Also read from the
    /// `DATABASE_URL` environment variable. Without it the exchange runs on
    /// its journal alone and the history endpoints answer 503.
    pub database_url: Option<String>,
    /// How long one database write may take before the writer gives up on
    /// it, reconnects and starts again from the database's cursor.
    pub database_transaction_timeout_ms: u64,
    /// How far behind the matcher the history database may fall (after a
    /// commit, or with nothing committed for this long) before `/health`
    /// says `degraded`.
    pub database_lag_max_ms: u64,
    /// The engine's limits. Those named here are journaled at start when
    /// they differ from the journal's (the engine's output depends on them,
    /// so they live in the journal); those not named keep the journal's
    /// values (the defaults for a new data directory).
    pub limits: LimitsConfig,
    /// `text` (human-readable) or `json` (one object per line).
    pub log_format: crate::log::LogFormat,
    /// Which lines are logged: a level (`info`) or directives per module
    /// (`info,persistence=debug`).
    pub log_level: String,
    /// This node's place in a replicated cluster (docs/replication.md).
    /// Without the section the exchange runs alone, as it always has.
    pub cluster: Option<ClusterConfig>,
}

/// The most voting members a cluster may name: every command waits for a
/// majority of them, so more members cost latency, not safety.
pub const CLUSTER_MEMBERS_MAX: usize = 9;

/// The `[cluster]` section: which node this is and who its peers are.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: one of `members`' ids.
    pub node_id: u64,
    /// Where this node listens for the other nodes' Raft messages (not the
    /// API port). Nothing authenticates this port: bind it to a private
    /// network.
    #[serde(deserialize_with = "listen_address")]
    pub raft_listen: SocketAddr,
    /// Every voting member, this node included. A new cluster is formed
    /// from this list on the first start of the node named by
    /// `bootstrap`; later changes of membership go through
    /// `exctl cluster add|remove`, not through this list.
    pub members: Vec<MemberConfig>,
    /// The member that forms a new cluster (usually the first): only it,
    /// and only on its first start with an empty data directory.
    #[serde(default)]
    pub bootstrap: bool,
    /// How often the leader tells the followers it is alive.
    #[serde(default = "heartbeat_ms_default")]
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_min_ms, election_timeout_max_ms)` starts an
    /// election (after a pre-vote).
    #[serde(default = "election_timeout_min_ms_default")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "election_timeout_max_ms_default")]
    pub election_timeout_max_ms: u64,
    /// Every node hashes its whole state after each command whose sequence
    /// number is a multiple of this, and the leader records its hash in the
    /// log for the others to compare (docs/replication.md). The same on
    /// every node.
    #[serde(default = "hash_mark_interval_seqs_default")]
    pub hash_mark_interval_seqs: u64,
    /// Every node writes a snapshot image (engine and read views, with its
    /// log position) after this many log entries, and purges its log
    /// behind it; 0: never (the log is kept whole and replayed at start).
    #[serde(default = "snapshot_every_entries_default")]
    pub snapshot_every_entries: u64,
    /// Log entries kept behind the newest image: a follower less than this
    /// far behind catches up by log, one further behind by the image.
    #[serde(default = "log_kept_after_snapshot_entries_default")]
    pub log_kept_after_snapshot_entries: u64,
}

/// The default `snapshot_every_entries`: one log entry holds one command or
/// more, so this is at most as often as a single node's default.
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 1_000_000;

fn snapshot_every_entries_default() -> u64 {
    SNAPSHOT_EVERY_ENTRIES_DEFAULT
}

/// The default `log_kept_after_snapshot_entries`: seconds of full load, so
/// that a follower restarted quickly needs no image.
pub const LOG_KEPT_AFTER_SNAPSHOT_ENTRIES_DEFAULT: u64 = 100_000;

fn log_kept_after_snapshot_entries_default() -> u64 {
    LOG_KEPT_AFTER_SNAPSHOT_ENTRIES_DEFAULT
}

/// The default `hash_mark_interval_seqs`: hashing costs well under 1% of
/// the matcher's time at this interval (measured in docs/replication.md).
pub const HASH_MARK_INTERVAL_SEQS_DEFAULT: u64 = 4_000_000;

fn hash_mark_interval_seqs_default() -> u64 {
    HASH_MARK_INTERVAL_SEQS_DEFAULT
}

/// A member of the cluster as the others reach it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// Its Raft address (`HOST:PORT`), as the other nodes connect to it.
    pub raft: String,
    /// Its REST API's address (`HOST:PORT`), as clients reach it: named in
    /// the `X-Leader` header of a refused order.
    pub api: String,
    /// A learner follows the committed log and serves reads and market
    /// data, but never votes nor leads: adding learners adds read capacity
    /// without adding to the majority every order waits for.
    #[serde(default)]
    pub learner: bool,
}

fn heartbeat_ms_default() -> u64 {
    50
}

fn election_timeout_min_ms_default() -> u64 {
    150
}

fn election_timeout_max_ms_default() -> u64 {
    300
}

impl ClusterConfig {
    fn check(&self) -> Result<(), String> {
        if self.members.is_empty() || self.members.len() > CLUSTER_MEMBERS_MAX {
            return Err(format!(
                "members must name 1 to {CLUSTER_MEMBERS_MAX} nodes, not {}",
                self.members.len()
            ));
        }
        for (index, member) in self.members.iter().enumerate() {
            if member.id == 0 {
                return Err("a member's id must be at least 1".into());
            }
            if self.members[..index].iter().any(|m| m.id == member.id) {
                return Err(format!("member id {} is named twice", member.id));
            }
            for (name, address) in [("raft", &member.raft), ("api", &member.api)] {
                if address
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                {
                    return Err(format!("member {}: {name} = {address:?} is not HOST:PORT", member.id));
                }
            }
        }
        if !self.members.iter().any(|m| m.id == self.node_id) {
            return Err(format!("node_id {} is not one of the members' ids", self.node_id));
        }
        if self.members.iter().all(|m| m.learner) {
            return Err("every member is a learner: at least one must vote".into());
        }
        if self.bootstrap && self.me().learner {
            return Err(format!(
                "node {} is a learner and cannot form the cluster (bootstrap = true): a voting member must",
                self.node_id
            ));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_min_ms {
            return Err(format!(
                "heartbeat_ms ({}) must be positive and below election_timeout_min_ms ({}): a leader must be heard \
                 before followers give up on it",
                self.heartbeat_ms, self.election_timeout_min_ms
            ));
        }
        if self.hash_mark_interval_seqs == 0 {
            return Err("hash_mark_interval_seqs must be positive".into());
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err(format!(
                "election_timeout_min_ms ({}) must be below election_timeout_max_ms ({}): the random spread \
                 between them is what keeps two followers from standing at once",
                self.election_timeout_min_ms, self.election_timeout_max_ms
            ));
        }
        Ok(())
    }

    /// This node as the members list names it.
    pub fn me(&self) -> &MemberConfig {
        self.members.iter().find(|m| m.id == self.node_id).expect("checked: node_id is a member")
    }
}

/// The `[limits]` section: each limit named here replaces the journal's.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub open_orders_per_user_max: Option<u32>,
    pub orders_max: Option<u32>,
    pub assets_max: Option<u32>,
    pub markets_max: Option<u32>,
    pub users_max: Option<u32>,
    pub api_keys_per_user_max: Option<u32>,
}

impl LimitsConfig {
    /// Every limit named must be at least 1: a limit of 0 would refuse all
    /// of what it bounds, which is a mistake, not a policy.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let named = [
            ("open_orders_per_user_max", self.open_orders_per_user_max),
            ("orders_max", self.orders_max),
            ("assets_max", self.assets_max),
            ("markets_max", self.markets_max),
            ("users_max", self.users_max),
            ("api_keys_per_user_max", self.api_keys_per_user_max),
        ];
        for (name, value) in named {
            if value == Some(0) {
                return Err((name, format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }

    /// `limits` with the values named here.
    pub fn apply_to(&self, limits: EngineLimits) -> EngineLimits {
        EngineLimits {
            open_orders_per_user_max: self
                .open_orders_per_user_max
                .unwrap_or(limits.open_orders_per_user_max),
            orders_max: self.orders_max.unwrap_or(limits.orders_max),
            assets_max: self.assets_max.unwrap_or(limits.assets_max),
            markets_max: self.markets_max.unwrap_or(limits.markets_max),
            users_max: self.users_max.unwrap_or(limits.users_max),
            api_keys_per_user_max: self.api_keys_per_user_max.unwrap_or(limits.api_keys_per_user_max),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityKind {
    None,
    Batch,
    Interval,
    /// A command is released once a majority of the cluster's members has
    /// it on disk (needs `[cluster]`).
    Replicated,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionKind {
    Keep,
    Delete,
    Archive,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WaitKind {
    Backoff,
    BusySpin,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            ws_queue_max: 4_096,
            // A client on a working link takes a frame in milliseconds;
            // one whose socket stays full this long is not reading.
            ws_send_timeout_ms: 5_000,
            data_dir: PathBuf::from("./data"),
            durability: DurabilityKind::Batch,
            sync_interval_ms: 10,
            segment_bytes: journal::SEGMENT_BYTES_DEFAULT,
            checkpoint_interval_ms: journal::CHECKPOINT_INTERVAL_MS_DEFAULT,
            snapshot_every_commands: 1_000_000,
            snapshots_keep: 3,
            segment_retention: RetentionKind::Keep,
            inbound_ring_size: 1 << 16,
            outbound_ring_size: 1 << 18,
            wait_strategy: WaitKind::Backoff,
            matcher_core: None,
            admin_token: None,
            database_url: None,
            request_body_max_bytes: 64 * 1024,
            connections_max: 10_000,
            request_timeout_ms: 5_000,
            recv_window_max_ms: 60_000,
            rate_limit_per_s: 200,
            rate_limit_burst: 400,
            request_weight_per_minute: 6_000,
            recent_trades_max: 10_000,
            recent_trades_kept_ms: 24 * 3_600_000,
            closed_orders_kept_per_user: 1_000,
            closed_orders_kept_ms: 7 * 24 * 3_600_000,
            database_transaction_timeout_ms: 30_000,
            database_lag_max_ms: persistence::WRITER_LAG_MAX_DEFAULT.as_millis() as u64,
            limits: LimitsConfig::default(),
            log_format: crate::log::LogFormat::Text,
            log_level: "info".to_string(),
            cluster: None,
        }
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `file` (if given), then applies `EXCHANGE_*` variables from
    /// `env`, then checks the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        if let Some((_, url)) = env.iter().find(|(name, _)| name == "DATABASE_URL") {
            config.database_url = Some(url.clone());
        }
        for (name, value) in env {
            let Some(setting) = name.strip_prefix("EXCHANGE_") else { continue };
            config.set(setting, &value).map_err(|why| ConfigError(format!("{name}={value:?}: {why}")))?;
        }
        if config.database_url.as_deref().is_some_and(|url| url.trim().is_empty()) {
            config.database_url = None;
        }
        config.check()?;
        Ok(config)
    }

    /// Applies one environment override, named as in the file but in upper case.
    fn set(&mut self, setting: &str, value: &str) -> Result<(), String> {
        fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            value.parse::<T>().map_err(|e| e.to_string())
        }
        fn kind<T: for<'de> Deserialize<'de>>(value: &str) -> Result<T, String> {
            T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value))
                .map_err(|e| e.to_string())
        }
        match setting {
            "LISTEN" => self.listen = resolve(value)?,
            "WS_LISTEN" => self.ws_listen = resolve(value)?,
            "WS_QUEUE_MAX" => self.ws_queue_max = parse(value)?,
            "WS_SEND_TIMEOUT_MS" => self.ws_send_timeout_ms = parse(value)?,
            "DATA_DIR" => self.data_dir = PathBuf::from(value),
            "DURABILITY" => self.durability = kind(value)?,
            "SYNC_INTERVAL_MS" => self.sync_interval_ms = parse(value)?,
            "SEGMENT_BYTES" => self.segment_bytes = parse(value)?,
            "CHECKPOINT_INTERVAL_MS" => self.checkpoint_interval_ms = parse(value)?,
            "SNAPSHOT_EVERY_COMMANDS" => self.snapshot_every_commands = parse(value)?,
            "SNAPSHOTS_KEEP" => self.snapshots_keep = parse(value)?,
            "SEGMENT_RETENTION" => self.segment_retention = kind(value)?,
            "INBOUND_RING_SIZE" => self.inbound_ring_size = parse(value)?,
            "OUTBOUND_RING_SIZE" => self.outbound_ring_size = parse(value)?,
            "WAIT_STRATEGY" => self.wait_strategy = kind(value)?,
            "MATCHER_CORE" => self.matcher_core = Some(parse(value)?),
            "ADMIN_TOKEN" => self.admin_token = Some(value.to_string()),
            "DATABASE_URL" => self.database_url = Some(value.to_string()),
            "DATABASE_TRANSACTION_TIMEOUT_MS" => self.database_transaction_timeout_ms = parse(value)?,
            "DATABASE_LAG_MAX_MS" => self.database_lag_max_ms = parse(value)?,
            "REQUEST_BODY_MAX_BYTES" => self.request_body_max_bytes = parse(value)?,
            "CONNECTIONS_MAX" => self.connections_max = parse(value)?,
            "REQUEST_TIMEOUT_MS" => self.request_timeout_ms = parse(value)?,
            "RECV_WINDOW_MAX_MS" => self.recv_window_max_ms = parse(value)?,
            "RATE_LIMIT_PER_S" => self.rate_limit_per_s = parse(value)?,
            "RATE_LIMIT_BURST" => self.rate_limit_burst = parse(value)?,
            "REQUEST_WEIGHT_PER_MINUTE" => self.request_weight_per_minute = parse(value)?,
            "RECENT_TRADES_MAX" => self.recent_trades_max = parse(value)?,
            "RECENT_TRADES_KEPT_MS" => self.recent_trades_kept_ms = parse(value)?,
            "CLOSED_ORDERS_KEPT_PER_USER" => self.closed_orders_kept_per_user = parse(value)?,
            "CLOSED_ORDERS_KEPT_MS" => self.closed_orders_kept_ms = parse(value)?,
            "OPEN_ORDERS_PER_USER_MAX" => self.limits.open_orders_per_user_max = Some(parse(value)?),
            "ORDERS_MAX" => self.limits.orders_max = Some(parse(value)?),
            "USERS_MAX" => self.limits.users_max = Some(parse(value)?),
            "LOG_FORMAT" => self.log_format = kind(value)?,
            "LOG_LEVEL" => self.log_level = value.to_string(),
            "API_KEYS_PER_USER_MAX" => self.limits.api_keys_per_user_max = Some(parse(value)?),
            _ => return Err("no such setting (see the README's configuration table)".into()),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        crate::log::check_level(&self.log_level).map_err(|e| ConfigError(format!("log_level: {e}")))?;
        for (name, size) in
            [("inbound_ring_size", self.inbound_ring_size), ("outbound_ring_size", self.outbound_ring_size)]
        {
            if !size.is_power_of_two() || size < 64 {
                return Err(ConfigError(format!("{name} must be a power of two of at least 64, not {size}")));
            }
        }
        if self.segment_bytes < journal::SEGMENT_BYTES_MIN {
            return Err(ConfigError(format!(
                "segment_bytes must be at least {}",
                journal::SEGMENT_BYTES_MIN
            )));
        }
        if let Some(token) = &self.admin_token {
            if token.len() < 16 {
                return Err(ConfigError("admin_token must have at least 16 characters".into()));
            }
        }
        if self.connections_max == 0 {
            return Err(ConfigError("connections_max must be positive".into()));
        }
        if self.checkpoint_interval_ms == 0 {
            return Err(ConfigError("checkpoint_interval_ms must be positive".into()));
        }
        if let Err((_, why)) = self.limits.check() {
            return Err(ConfigError(format!("[limits] {why}")));
        }
        if self.ws_send_timeout_ms == 0 {
            return Err(ConfigError("ws_send_timeout_ms must be positive".into()));
        }
        if self.database_transaction_timeout_ms == 0 {
            return Err(ConfigError("database_transaction_timeout_ms must be positive".into()));
        }
        if self.database_lag_max_ms == 0 {
            return Err(ConfigError("database_lag_max_ms must be positive".into()));
        }
        if let Some(url) = &self.database_url {
            // A string that cannot be parsed never connects: refused here
            // rather than retried for ever (the reason never shows the password).
            persistence::connection_string::check(url).map_err(|why| {
                ConfigError(format!(
                    "database_url (or DATABASE_URL, EXCHANGE_DATABASE_URL): {why}; the form is \
                     \"host=... port=... user=... password=... dbname=...\" or \
                     \"postgres://user:password@host:port/dbname\""
                ))
            })?;
        }
        if self.request_weight_per_minute == 0 {
            return Err(ConfigError("request_weight_per_minute must be positive".into()));
        }
        if self.rate_limit_per_s == 0 || self.rate_limit_burst == 0 {
            return Err(ConfigError("rate_limit_per_s and rate_limit_burst must be positive".into()));
        }
        match (&self.cluster, self.durability) {
            (Some(cluster), DurabilityKind::Replicated) => {
                cluster.check().map_err(|why| ConfigError(format!("[cluster] {why}")))?;
            }
            (Some(_), _) => {
                return Err(ConfigError(
                    "a [cluster] node journals through the cluster: set durability = \"replicated\"".into(),
                ))
            }
            (None, DurabilityKind::Replicated) => {
                return Err(ConfigError(
                    "durability = \"replicated\" needs a [cluster] section naming this node and its peers"
                        .into(),
                ))
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// What the read views keep.
    pub fn retention_of_views(&self) -> crate::views::Retention {
        crate::views::Retention {
            closed_orders_per_user_max: self.closed_orders_kept_per_user,
            closed_order_age_max_ms: self.closed_orders_kept_ms,
            trades_per_market_max: self.recent_trades_max,
            trade_age_max_ms: self.recent_trades_kept_ms,
        }
    }

    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityKind::None => Durability::None,
            DurabilityKind::Batch => Durability::Batch,
            DurabilityKind::Interval => Durability::Interval { interval_ms: self.sync_interval_ms },
            // Each node syncs its log before it counts towards a majority.
            DurabilityKind::Replicated => Durability::Batch,
        }
    }

    pub fn retention(&self) -> SegmentRetention {
        match self.segment_retention {
            RetentionKind::Keep => SegmentRetention::Keep,
            RetentionKind::Delete => SegmentRetention::Delete,
            RetentionKind::Archive => SegmentRetention::Archive(self.data_dir.join("archive")),
        }
    }
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` resolved now (the
/// first IPv4 address of the name if it has one, since clients that say
/// `localhost` mostly mean 127.0.0.1).
fn resolve(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = value.parse() {
        return Ok(address);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} is not HOST:PORT (for example 127.0.0.1:8080 or localhost:8080)"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{value:?} is not HOST:PORT (for example 127.0.0.1:8080 or localhost:8080)"));
    }
    let addresses: Vec<SocketAddr> =
        value.to_socket_addrs().map_err(|e| format!("cannot resolve host {host:?}: {e}"))?.collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("host {host:?} has no address"))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let value = String::deserialize(deserializer)?;
    resolve(&value).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let config = Config::load(None, env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.durability(), Durability::Batch);
        assert_eq!(config.admin_token, None);
    }

    fn cluster_config(cluster: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, cluster).unwrap();
        Config::load(Some(&path), env(&[]))
    }

    const MEMBERS: &str =
        "members = [\n  { id = 1, raft = \"127.0.0.1:7101\", api = \"127.0.0.1:8101\" },\n  \
                           { id = 2, raft = \"127.0.0.1:7102\", api = \"127.0.0.1:8102\" },\n]\n";

    #[test]
    fn a_cluster_section_names_this_node_among_its_members() {
        let config =
            cluster_config(&format!("durability = \"replicated\"\n[cluster]\nnode_id = 2\nraft_listen = \"127.0.0.1:7102\"\n{MEMBERS}"))
                .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(
            (cluster.me().api.as_str(), cluster.heartbeat_ms, cluster.bootstrap),
            ("127.0.0.1:8102", 50, false)
        );

        let refused = |text: String, expected: &str| {
            let error = cluster_config(&text).unwrap_err().0;
            assert!(error.contains(expected), "{error:?} does not say {expected:?}");
        };
        let cluster = |extra: &str| {
            format!("[cluster]\nnode_id = 1\nraft_listen = \"127.0.0.1:7101\"\n{extra}{MEMBERS}")
        };
        refused(cluster(""), "set durability = \"replicated\"");
        refused("durability = \"replicated\"\n".into(), "needs a [cluster] section");
        let replicated = |extra: &str| format!("durability = \"replicated\"\n{}", cluster(extra));
        refused(replicated("").replace("node_id = 1", "node_id = 3"), "node_id 3 is not one of the members");
        refused(replicated("heartbeat_ms = 200\n"), "must be positive and below election_timeout_min_ms");
        refused(replicated("hash_mark_interval_seqs = 0\n"), "hash_mark_interval_seqs must be positive");
        refused(
            replicated("election_timeout_min_ms = 300\nelection_timeout_max_ms = 300\n"),
            "must be below election_timeout_max_ms",
        );
        refused(replicated("").replace("id = 2,", "id = 1,"), "member id 1 is named twice");
        refused(replicated("").replace("127.0.0.1:8102", "nowhere"), "is not HOST:PORT");
        let learners = |text: String| {
            text.replace("api = \"127.0.0.1:8102\"", "api = \"127.0.0.1:8102\", learner = true")
        };
        refused(
            learners(replicated("bootstrap = true\n").replace("node_id = 1", "node_id = 2")),
            "node 2 is a learner and cannot form the cluster",
        );
        refused(
            learners(replicated(""))
                .replace("api = \"127.0.0.1:8101\"", "api = \"127.0.0.1:8101\", learner = true"),
            "every member is a learner",
        );
        // A cluster node feeds PostgreSQL from its replicated log.
        let with_database = format!("database_url = \"host=localhost\"\n{}", replicated(""));
        assert!(cluster_config(&with_database).is_ok_and(|c| c.database_url.is_some() && c.cluster.is_some()));
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exchange.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ndurability = \"interval\"\n[limits]\nusers_max = 5\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[("EXCHANGE_DURABILITY", "none"), ("EXCHANGE_ADMIN_TOKEN", "0123456789abcdefXYZ")]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.durability, DurabilityKind::None);
        assert_eq!(config.limits.users_max, Some(5));
        assert_eq!(
            config.limits.apply_to(EngineLimits::default()).orders_max,
            EngineLimits::default().orders_max
        );
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdefXYZ"));
    }

    /// `deploy/exchange.toml` states every setting the README documents,
    /// each at its real default, and commented-out ones uncomment cleanly.
    #[test]
    fn the_sample_configuration_has_every_setting_at_its_default() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sample_path = root.join("deploy/exchange.toml");
        let sample = std::fs::read_to_string(&sample_path).unwrap();
        let config = Config::load(Some(&sample_path), env(&[])).unwrap();
        assert_eq!(config, Config::default(), "a value in deploy/exchange.toml is not the default");

        let named: Vec<&str> = sample
            .lines()
            .map(|line| line.trim_start_matches('#').trim())
            .filter_map(|line| line.split_once(" = ").map(|(name, _)| name))
            .collect();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let table = readme.split("### Configuration").nth(1).unwrap().split("\n## ").next().unwrap();
        let documented: Vec<&str> = table
            .lines()
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|line| line.split(" | ").next())
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .filter(|name| !name.starts_with('['))
            .collect();
        assert!(documented.len() > 30, "the README's table was not found: {documented:?}");
        for name in &documented {
            assert!(named.contains(name), "{name} is in the README's table but not in deploy/exchange.toml");
        }
        for name in &named {
            assert!(
                documented.contains(name),
                "{name} is in deploy/exchange.toml but not in the README's table"
            );
        }

        // Every commented-out setting, uncommented, is accepted.
        let uncommented: String = sample
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exchange.toml");
        std::fs::write(&path, uncommented).unwrap();
        let config = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(
            config.limits.open_orders_per_user_max,
            Some(EngineLimits::default().open_orders_per_user_max)
        );
        assert_eq!(config.limits.users_max, Some(EngineLimits::default().users_max));
        assert_eq!(config.matcher_core, Some(1));
    }

    #[test]
    fn listen_addresses_may_name_a_host() {
        let config = Config::load(
            None,
            env(&[("EXCHANGE_LISTEN", "localhost:9100"), ("EXCHANGE_WS_LISTEN", "[::1]:9101")]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.ws_listen.to_string(), "[::1]:9101");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exchange.toml");
        std::fs::write(&path, "listen = \"localhost:9200\"\nws_listen = \"0.0.0.0:9201\"\n").unwrap();
        let config = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9200");
        assert_eq!(config.ws_listen.to_string(), "0.0.0.0:9201");

        for bad in ["localhost", "localhost:http", ":8080", "no-such-host.invalid:8080"] {
            let error = Config::load(None, env(&[("EXCHANGE_LISTEN", bad)])).unwrap_err().to_string();
            assert!(error.contains("EXCHANGE_LISTEN"), "{bad}: {error}");
        }
        std::fs::write(&path, "listen = \"no-such-host.invalid:1\"\n").unwrap();
        let error = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(error.contains("cannot resolve host"), "{error}");
    }

    #[test]
    fn mistakes_are_named() {
        let error = Config::load(None, env(&[("EXCHANGE_DURABILITY", "sometimes")])).unwrap_err();
        assert!(error.to_string().contains("EXCHANGE_DURABILITY"), "{error}");
        let error = Config::load(None, env(&[("EXCHANGE_NO_SUCH", "1")])).unwrap_err();
        assert!(error.to_string().contains("no such setting"), "{error}");
        let error = Config::load(None, env(&[("EXCHANGE_WS_SEND_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(error.to_string().contains("ws_send_timeout_ms must be positive"), "{error}");
        let error = Config::load(None, env(&[("EXCHANGE_INBOUND_RING_SIZE", "1000")])).unwrap_err();
        assert!(error.to_string().contains("power of two"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let error = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
        let error =
            Config::load(None, env(&[("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:notaport/db")]))
                .unwrap_err();
        assert!(error.to_string().contains("database_url"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
