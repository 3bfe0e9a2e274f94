//! `exctl seed`: creates assets, markets, users with API keys, and deposits
//! on a running exchange through its admin API, from a TOML file (see
//! `examples/demo-seed.toml`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::Server;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    assets: Vec<AssetSeed>,
    #[serde(default)]
    markets: Vec<MarketSeed>,
    #[serde(default)]
    users: Vec<UserSeed>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AssetSeed {
    symbol: String,
    decimals: u8,
}

#[derive(Deserialize, Debug, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct MarketSeed {
    base: String,
    quote: String,
    tick_size: String,
    lot_size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_quantity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_notional: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maker_fee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taker_fee: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct UserSeed {
    name: String,
    #[serde(default)]
    deposits: BTreeMap<String, String>,
}

/// A user the seed created, with the key that is shown only now.
#[derive(Debug, serde::Serialize)]
pub struct SeededUser {
    pub name: String,
    pub user_id: u64,
    pub api_key: String,
    pub secret: String,
}

pub fn load(path: &Path) -> Result<SeedFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Applies the seed; assets and markets that exist already are skipped.
pub fn apply(
    server: &Server,
    admin_token: &str,
    seed: &SeedFile,
    mut log: impl FnMut(&str),
) -> Result<Vec<SeededUser>, String> {
    let headers = [("X-Admin-Token", admin_token)];
    let call = |path: &str, body: Value| -> Result<(u16, Value), String> {
        server.request("POST", path, &headers, &body)
    };
    let fail = |what: &str, status: u16, body: &Value| {
        format!("{what}: HTTP {status}: {}", body["error"]["message"].as_str().unwrap_or(&body.to_string()))
    };
    for asset in &seed.assets {
        let (status, body) =
            call("/admin/assets", json!({ "symbol": asset.symbol, "decimals": asset.decimals }))?;
        match (status, body["error"]["code"].as_str()) {
            (200, _) => log(&format!("asset {} created (id {})", asset.symbol, body["asset_id"])),
            (409, Some("duplicate_asset")) => log(&format!("asset {} exists already", asset.symbol)),
            _ => return Err(fail(&format!("asset {}", asset.symbol), status, &body)),
        }
    }
    for market in &seed.markets {
        let name = crate::market_name::canonical(&market.base, &market.quote);
        let body = serde_json::to_value(market).map_err(|e| e.to_string())?;
        let (status, body) = call("/admin/markets", body)?;
        match (status, body["error"]["code"].as_str()) {
            (200, _) => {
                log(&format!("market {name} created (tick {}, lot {})", body["tick_size"], body["lot_size"]))
            }
            (409, Some("duplicate_market")) => log(&format!("market {name} exists already")),
            _ => return Err(fail(&format!("market {name}"), status, &body)),
        }
    }
    let mut created = Vec::new();
    for user in &seed.users {
        let (status, body) = call("/admin/users", json!({}))?;
        if status != 200 {
            return Err(fail(&format!("user {}", user.name), status, &body));
        }
        let user_id = body["user_id"].as_u64().ok_or("the server gave no user id")?;
        let (status, key) = call("/admin/api_keys", json!({ "user_id": user_id }))?;
        if status != 200 {
            return Err(fail(&format!("API key of {}", user.name), status, &key));
        }
        for (asset, amount) in &user.deposits {
            let (status, body) =
                call("/admin/deposit", json!({ "user_id": user_id, "asset": asset, "amount": amount }))?;
            if status != 200 {
                return Err(fail(&format!("deposit of {amount} {asset} for {}", user.name), status, &body));
            }
        }
        log(&format!("user {} created (id {user_id}) with {} deposits", user.name, user.deposits.len()));
        created.push(SeededUser {
            name: user.name.clone(),
            user_id,
            api_key: key["api_key"].as_str().unwrap_or_default().to_string(),
            secret: key["secret"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(created)
}
