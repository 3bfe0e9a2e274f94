//! exctl's admin verbs: assets, markets (create, list, status, fees), users,
//! API keys, deposits, withdrawals and the engine's limits, each one call of
//! a running exchange's admin API (`/admin/...`, docs/api.md).
//!
//! Amounts, sizes and fees are decimal strings, passed to the server as
//! typed: the server is the one judge of what is valid, and its refusal is
//! printed as it gave it. Markets may be typed in any spelling
//! (`BTCUSDT`, `BTC/USDT`) and are printed as `BTC-USDT`
//! ([`crate::market_name`]).
//!
//! Exit status: 0 done, 1 the server refused (its message on standard
//! error; with `--json` its answer on standard output too), 2 the server
//! could not be asked (unreachable, bad address, no token).

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::http::Server;
use crate::market_name;

/// Where the exchange is and how to prove the right to administer it.
#[derive(Args, Debug)]
pub struct Connection {
    /// The exchange's address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The admin token (default: the EXCHANGE_ADMIN_TOKEN variable).
    #[arg(long, global = true)]
    admin_token: Option<String>,
    /// Print the server's answer as one JSON object.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create or list assets.
    Asset {
        #[command(subcommand)]
        verb: AssetVerb,
        #[command(flatten)]
        to: Connection,
    },
    /// Create, list, open, halt or re-price markets.
    Market {
        #[command(subcommand)]
        verb: MarketVerb,
        #[command(flatten)]
        to: Connection,
    },
    /// Create users.
    User {
        #[command(subcommand)]
        verb: UserVerb,
        #[command(flatten)]
        to: Connection,
    },
    /// Create or revoke a user's API keys.
    Key {
        #[command(subcommand)]
        verb: KeyVerb,
        #[command(flatten)]
        to: Connection,
    },
    /// Credit a user's available balance: `exctl deposit 3 1.5 BTC`.
    Deposit {
        #[command(flatten)]
        funds: Funds,
        #[command(flatten)]
        to: Connection,
    },
    /// Debit a user's available balance (never funds locked by open orders).
    Withdraw {
        #[command(flatten)]
        funds: Funds,
        #[command(flatten)]
        to: Connection,
    },
    /// Show or change the engine's limits (each change is journaled).
    Limits {
        #[command(subcommand)]
        verb: LimitsVerb,
        #[command(flatten)]
        to: Connection,
    },
    /// A cluster's members: list them, add or remove one (changes go to
    /// the leader; a follower answers with the leader's address).
    Cluster {
        #[command(subcommand)]
        verb: ClusterVerb,
        #[command(flatten)]
        to: Connection,
    },
    /// The node's history database (PostgreSQL).
    Database {
        #[command(subcommand)]
        verb: DatabaseVerb,
        #[command(flatten)]
        to: Connection,
    },
}

#[derive(Subcommand, Debug)]
pub enum DatabaseVerb {
    /// `exctl database seed-from-image --reason '...' --server http://NODE`:
    /// seeds the node's EMPTY history database from the node's newest
    /// snapshot image, when the node's log no longer reaches back to the
    /// database's start (its writer reports the gap on /health). Writes,
    /// in one transaction, the state the image holds (reference data,
    /// balances as opening ledger rows, open orders and order lists), a
    /// `seeded_from` record with the reason, and the cursor at the image;
    /// the writer then goes on from the log after it. The history before
    /// the image (trades, closed orders, ledger) is not in the database.
    /// Refused (exit 1, nothing written) if the database holds any history
    /// or if the node can feed it from its log. Asks the node given by
    /// --server, not the leader: seeding is the node's own writer's.
    SeedFromImage {
        /// Why (kept in seeded_from.reason; 1 to 500 characters).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterVerb {
    /// Every member with its role and addresses, the leader, the term and
    /// (asked of the leader) how far each member's log is.
    Status,
    /// `exctl cluster add 4 --raft 10.0.0.4:7100 --api 10.0.0.4:8080`: adds
    /// a node as a learner, then makes it a voter once it has caught up
    /// (`--learner`: it stays a learner, serving reads and market data).
    Add {
        id: u64,
        /// Its Raft address, HOST:PORT.
        #[arg(long)]
        raft: String,
        /// Its REST API address, HOST:PORT.
        #[arg(long)]
        api: String,
        #[arg(long)]
        learner: bool,
    },
    /// `exctl cluster remove 4`: the node leaves the cluster (the last
    /// voter cannot).
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum AssetVerb {
    /// `exctl asset add BTC --decimals 8`
    Add {
        symbol: String,
        /// Decimal places of the asset's smallest unit (8 for BTC: 1 satoshi).
        #[arg(long)]
        decimals: u8,
    },
    /// Every asset with its id and decimals.
    List,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Status {
    Open,
    CancelOnly,
    Halted,
}

impl Status {
    fn api_name(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::CancelOnly => "cancel_only",
            Status::Halted => "halted",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum MarketVerb {
    /// `exctl market add BTC-USDT --tick-size 0.01 --lot-size 0.0001`
    Add {
        /// BASE-QUOTE (BTCUSDT and BTC/USDT are understood too).
        market: String,
        /// Price step, in quote per whole base.
        #[arg(long)]
        tick_size: String,
        /// Quantity step, in base.
        #[arg(long)]
        lot_size: String,
        /// Smallest order quantity, in base (default: one lot).
        #[arg(long)]
        min_quantity: Option<String>,
        /// Smallest order value, in quote (default: 0).
        #[arg(long)]
        min_notional: Option<String>,
        /// Fee of the resting side as a fraction: 0.001 is 0.1% (default: 0).
        #[arg(long)]
        maker_fee: Option<String>,
        /// Fee of the incoming side as a fraction (default: 0).
        #[arg(long)]
        taker_fee: Option<String>,
        /// The market's status at creation (default: open).
        #[arg(long, value_enum)]
        status: Option<Status>,
    },
    /// Every market with its sizes, fees and status.
    List,
    /// `exctl market status BTC-USDT halted`: open (trading), cancel-only
    /// (cancels only), halted (nothing).
    Status {
        market: String,
        #[arg(value_enum)]
        status: Status,
    },
    /// `exctl market fees BTC-USDT --maker-fee 0.001 --taker-fee 0.002`
    /// (applies to trades from now on, resting orders' included).
    Fees {
        market: String,
        #[arg(long)]
        maker_fee: String,
        #[arg(long)]
        taker_fee: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserVerb {
    /// Create a user with empty balances; prints its id.
    Add,
}

#[derive(Subcommand, Debug)]
pub enum KeyVerb {
    /// Create an API key for a user; the secret is shown this once only.
    Add { user_id: u32 },
    /// Revoke one of a user's API keys.
    Revoke { user_id: u32, api_key: String },
}

#[derive(Args, Debug)]
pub struct Funds {
    user_id: u32,
    /// A decimal amount of the asset (`1.5`).
    amount: String,
    /// The asset's symbol (`BTC`).
    asset: String,
}

#[derive(Subcommand, Debug)]
pub enum LimitsVerb {
    /// The engine's limits now.
    Show,
    /// Change the limits named (each at least 1); the others keep their values.
    Set {
        #[arg(long)]
        open_orders_per_user_max: Option<u32>,
        #[arg(long)]
        orders_max: Option<u32>,
        #[arg(long)]
        assets_max: Option<u32>,
        #[arg(long)]
        markets_max: Option<u32>,
        #[arg(long)]
        users_max: Option<u32>,
        #[arg(long)]
        api_keys_per_user_max: Option<u32>,
    },
}

/// The limits in the order `GET /admin/limits` documents them.
const LIMIT_NAMES: [&str; 6] = [
    "open_orders_per_user_max",
    "orders_max",
    "assets_max",
    "markets_max",
    "users_max",
    "api_keys_per_user_max",
];

/// A connection to the admin API, and the operator's choice of output.
struct Admin {
    server: Server,
    token: String,
    json: bool,
}

/// How one call ended: the server's answer, or its refusal.
enum Answer {
    Done(Value),
    Refused(ExitCode),
}

impl Admin {
    fn connect(to: Connection) -> Result<Admin, String> {
        let token = to
            .admin_token
            .or_else(|| std::env::var("EXCHANGE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()))
            .ok_or("give --admin-token or set EXCHANGE_ADMIN_TOKEN")?;
        Ok(Admin { server: Server::parse(&to.server)?, token, json: to.json })
    }

    /// One admin call. A refusal is printed as the server worded it.
    fn call(&self, method: &str, path: &str, body: Value) -> Result<Answer, String> {
        let headers = [("X-Admin-Token", self.token.as_str())];
        let (status, answer) = if method == "GET" {
            self.server.get_with(path, &headers)?
        } else {
            self.server.request(method, path, &headers, &body)?
        };
        if status == 200 {
            return Ok(Answer::Done(answer));
        }
        if self.json {
            println!("{answer}");
        }
        match (answer["error"]["message"].as_str(), answer["error"]["code"].as_str()) {
            (Some(message), Some(code)) => eprintln!("error: {message} (HTTP {status}, {code})"),
            _ => eprintln!("error: {method} {path} answered HTTP {status}: {answer}"),
        }
        Ok(Answer::Refused(ExitCode::from(1)))
    }

    /// A public read (`GET /assets`, `GET /markets`).
    fn list(&self, path: &str) -> Result<Vec<Value>, String> {
        let (status, answer) = self.server.get(path)?;
        match answer {
            Value::Array(items) if status == 200 => Ok(items),
            _ => Err(format!("GET {path} answered HTTP {status}: {answer}")),
        }
    }

    /// `market` in the canonical spelling, matched against the server's markets.
    fn market(&self, market: &str) -> Result<String, String> {
        if market.contains(['-', '/', '_']) {
            return Ok(market_name::parse(market, []));
        }
        let markets = self.list("/markets")?;
        Ok(market_name::parse(market, markets.iter().filter_map(|m| m["market"].as_str())))
    }

    /// Base and quote of a market to create: split where the operator
    /// split it, or (`BTCUSDT`) where an existing asset ends.
    fn base_and_quote(&self, market: &str) -> Result<(String, String), String> {
        let market = market.trim().to_ascii_uppercase();
        if let Some((base, quote)) = market.split_once(['-', '/', '_']) {
            return Ok((base.to_string(), quote.to_string()));
        }
        let assets = self.list("/assets")?;
        let symbols: Vec<&str> = assets.iter().filter_map(|a| a["symbol"].as_str()).collect();
        let splits: Vec<(&str, &str)> = (1..market.len())
            .filter_map(|at| market.split_at_checked(at))
            .filter(|(base, quote)| symbols.contains(base) && symbols.contains(quote))
            .collect();
        match splits[..] {
            [(base, quote)] => Ok((base.to_string(), quote.to_string())),
            [] => Err(format!(
                "{market} is not two existing assets end to end; write it BASE-QUOTE (assets: {})",
                symbols.join(", ")
            )),
            _ => Err(format!("{market} splits into assets more than one way; write it BASE-QUOTE")),
        }
    }

    /// Prints the answer as JSON, or `human` of it.
    fn show(&self, answer: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{answer}");
        } else {
            human(answer);
        }
    }
}

/// Runs one admin verb.
pub fn run(command: AdminCommand) -> Result<ExitCode, String> {
    let answer = match command {
        AdminCommand::Asset { verb, to } => asset(&Admin::connect(to)?, verb),
        AdminCommand::Market { verb, to } => market(&Admin::connect(to)?, verb),
        AdminCommand::User { verb: UserVerb::Add, to } => user_add(&Admin::connect(to)?),
        AdminCommand::Key { verb, to } => key(&Admin::connect(to)?, verb),
        AdminCommand::Deposit { funds, to } => move_funds(&Admin::connect(to)?, "deposit", funds),
        AdminCommand::Withdraw { funds, to } => move_funds(&Admin::connect(to)?, "withdraw", funds),
        AdminCommand::Limits { verb, to } => limits(&Admin::connect(to)?, verb),
        AdminCommand::Cluster { verb, to } => cluster(&Admin::connect(to)?, verb),
        AdminCommand::Database { verb, to } => database(&Admin::connect(to)?, verb),
    }?;
    Ok(match answer {
        Answer::Done(_) => ExitCode::SUCCESS,
        Answer::Refused(code) => code,
    })
}

fn database(admin: &Admin, verb: DatabaseVerb) -> Result<Answer, String> {
    let DatabaseVerb::SeedFromImage { reason } = verb;
    call_and_show(admin, "POST", "/admin/database/seed", json!({ "reason": reason }), |answer| {
        println!(
            "node {} seeded its database from its snapshot image at sequence {} (log index {}, term {}): {} \
             assets, {} markets, {} users, {} balances, {} open orders, {} order lists",
            text(&answer["node_id"]),
            text(&answer["image_seq"]),
            text(&answer["raft_index"]),
            text(&answer["raft_term"]),
            text(&answer["assets"]),
            text(&answer["markets"]),
            text(&answer["users"]),
            text(&answer["balances"]),
            text(&answer["open_orders"]),
            text(&answer["order_lists"]),
        );
        println!(
            "the history before sequence {} (trades, closed orders, ledger) is not in the database; the \
             writer goes on from the log after the image (exctl health shows it catching up)",
            text(&answer["image_seq"])
        );
    })
}

fn cluster(admin: &Admin, verb: ClusterVerb) -> Result<Answer, String> {
    let (method, body, done) = match verb {
        ClusterVerb::Status => ("GET", Value::Null, None),
        ClusterVerb::Add { id, raft, api, learner } => {
            let role = if learner { "learner" } else { "voter" };
            (
                "POST",
                json!({ "id": id, "raft": raft, "api": api, "learner": learner }),
                Some(format!("node {id} added as a {role}")),
            )
        }
        ClusterVerb::Remove { id } => ("DELETE", json!({ "id": id }), Some(format!("node {id} removed"))),
    };
    let path = if method == "GET" { "/admin/cluster" } else { "/admin/cluster/members" };
    call_and_show(admin, method, path, body, |answer| {
        if let Some(done) = done {
            println!("{done}");
        }
        println!(
            "node {} is {}; leader {} (api {}), term {}, log {} committed {} applied {}{}",
            text(&answer["node_id"]),
            text(&answer["role"]),
            text(&answer["leader"]),
            text(&answer["leader_api"]),
            text(&answer["term"]),
            text(&answer["last_log_index"]),
            text(&answer["committed_index"]),
            text(&answer["applied_index"]),
            if answer["changing"] == Value::Bool(true) { " (membership change under way)" } else { "" }
        );
        println!("{:>4}  {:<8} {:<24} {:<24} matched", "id", "role", "raft", "api");
        for member in answer["members"].as_array().into_iter().flatten() {
            println!(
                "{:>4}  {:<8} {:<24} {:<24} {}",
                text(&member["id"]),
                text(&member["role"]),
                text(&member["raft"]),
                text(&member["api"]),
                text(&member["matched_index"])
            );
        }
    })
}

/// Calls, and on success shows the answer.
fn call_and_show(
    admin: &Admin,
    method: &str,
    path: &str,
    body: Value,
    human: impl FnOnce(&Value),
) -> Result<Answer, String> {
    let answer = admin.call(method, path, body)?;
    if let Answer::Done(value) = &answer {
        admin.show(value, human);
    }
    Ok(answer)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// A decimal string from the server without trailing zeros (`1.000000` is
/// `1`): the asset's scale is not news to an operator.
fn decimal(value: &Value) -> String {
    let text = text(value);
    if text.contains('.') && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn asset(admin: &Admin, verb: AssetVerb) -> Result<Answer, String> {
    match verb {
        AssetVerb::Add { symbol, decimals } => {
            let body = json!({ "symbol": symbol, "decimals": decimals });
            call_and_show(admin, "POST", "/admin/assets", body, |answer| {
                println!("asset {symbol} created (id {}, {decimals} decimals)", text(&answer["asset_id"]))
            })
        }
        AssetVerb::List => {
            let assets = admin.list("/assets")?;
            if admin.json {
                println!("{}", Value::Array(assets));
            } else {
                println!("{:>4}  {:<12} {:>8}", "id", "asset", "decimals");
                for asset in &assets {
                    println!(
                        "{:>4}  {:<12} {:>8}",
                        text(&asset["asset_id"]),
                        text(&asset["symbol"]),
                        text(&asset["decimals"])
                    );
                }
            }
            Ok(Answer::Done(Value::Null))
        }
    }
}

/// One market as a line: name, id, status, sizes and fees.
fn market_line(market: &Value) -> String {
    format!(
        "{:<14} {:>4}  {:<11} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9}",
        text(&market["market"]),
        text(&market["market_id"]),
        text(&market["status"]),
        decimal(&market["tick_size"]),
        decimal(&market["lot_size"]),
        decimal(&market["min_quantity"]),
        decimal(&market["min_notional"]),
        decimal(&market["maker_fee"]),
        decimal(&market["taker_fee"]),
    )
}

const MARKET_HEADER: &str = "market           id  status         tick size     lot size min quantity min notional maker fee taker fee";

fn market(admin: &Admin, verb: MarketVerb) -> Result<Answer, String> {
    match verb {
        MarketVerb::Add {
            market,
            tick_size,
            lot_size,
            min_quantity,
            min_notional,
            maker_fee,
            taker_fee,
            status,
        } => {
            let (base, quote) = admin.base_and_quote(&market)?;
            let mut body =
                json!({ "base": base, "quote": quote, "tick_size": tick_size, "lot_size": lot_size });
            let optional = [
                ("min_quantity", min_quantity),
                ("min_notional", min_notional),
                ("maker_fee", maker_fee),
                ("taker_fee", taker_fee),
                ("status", status.map(|s| s.api_name().to_string())),
            ];
            for (field, value) in optional {
                if let Some(value) = value {
                    body[field] = Value::String(value);
                }
            }
            call_and_show(admin, "POST", "/admin/markets", body, |answer| {
                println!("market {} created (id {})", text(&answer["market"]), text(&answer["market_id"]));
                println!("{MARKET_HEADER}");
                println!("{}", market_line(answer));
            })
        }
        MarketVerb::List => {
            let markets = admin.list("/markets")?;
            if admin.json {
                println!("{}", Value::Array(markets));
            } else {
                println!("{MARKET_HEADER}");
                for market in &markets {
                    println!("{}", market_line(market));
                }
            }
            Ok(Answer::Done(Value::Null))
        }
        MarketVerb::Status { market, status } => {
            let market = admin.market(&market)?;
            let body = json!({ "market": market, "status": status.api_name() });
            call_and_show(admin, "POST", "/admin/markets/status", body, |answer| {
                println!("market {market} is now {}", text(&answer["status"]))
            })
        }
        MarketVerb::Fees { market, maker_fee, taker_fee } => {
            let market = admin.market(&market)?;
            let body = json!({ "market": market, "maker_fee": maker_fee, "taker_fee": taker_fee });
            call_and_show(admin, "POST", "/admin/markets/fees", body, |answer| {
                println!(
                    "market {market}: maker fee {}, taker fee {} (for trades from now on)",
                    decimal(&answer["maker_fee"]),
                    decimal(&answer["taker_fee"])
                )
            })
        }
    }
}

fn user_add(admin: &Admin) -> Result<Answer, String> {
    call_and_show(admin, "POST", "/admin/users", json!({}), |answer| {
        println!("user {} created", text(&answer["user_id"]))
    })
}

fn key(admin: &Admin, verb: KeyVerb) -> Result<Answer, String> {
    match verb {
        KeyVerb::Add { user_id } => {
            call_and_show(admin, "POST", "/admin/api_keys", json!({ "user_id": user_id }), |answer| {
                println!(
                    "key for user {user_id}: api_key={} secret={}",
                    text(&answer["api_key"]),
                    text(&answer["secret"])
                );
                println!("the secret is shown this once only: keep it now");
            })
        }
        KeyVerb::Revoke { user_id, api_key } => {
            let body = json!({ "user_id": user_id, "api_key": api_key });
            call_and_show(admin, "DELETE", "/admin/api_keys", body, |answer| {
                println!("key {} of user {user_id} revoked", text(&answer["revoked"]))
            })
        }
    }
}

fn move_funds(admin: &Admin, verb: &str, funds: Funds) -> Result<Answer, String> {
    let Funds { user_id, amount, asset } = funds;
    let asset = asset.trim().to_ascii_uppercase();
    let body = json!({ "user_id": user_id, "asset": asset, "amount": amount });
    let done = if verb == "deposit" { "deposited" } else { "withdrew" };
    call_and_show(admin, "POST", &format!("/admin/{verb}"), body, |answer| {
        println!(
            "{done} {amount} {asset} for user {user_id}: available {} {asset}, locked {} {asset}",
            decimal(&answer["available"]),
            decimal(&answer["locked"])
        )
    })
}

fn limits(admin: &Admin, verb: LimitsVerb) -> Result<Answer, String> {
    let print = |answer: &Value| {
        for name in LIMIT_NAMES {
            println!("{name:<26} {}", text(&answer[name]));
        }
    };
    match verb {
        LimitsVerb::Show => call_and_show(admin, "GET", "/admin/limits", Value::Null, print),
        LimitsVerb::Set {
            open_orders_per_user_max,
            orders_max,
            assets_max,
            markets_max,
            users_max,
            api_keys_per_user_max,
        } => {
            let changes = [
                open_orders_per_user_max,
                orders_max,
                assets_max,
                markets_max,
                users_max,
                api_keys_per_user_max,
            ];
            let mut body = json!({});
            for (name, value) in LIMIT_NAMES.iter().zip(changes) {
                if let Some(value) = value {
                    body[*name] = json!(value);
                }
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(format!(
                    "name at least one limit to change: --{}",
                    LIMIT_NAMES.map(|n| n.replace('_', "-")).join(", --")
                ));
            }
            call_and_show(admin, "PUT", "/admin/limits", body, print)
        }
    }
}
