//! `exctl health` and `exctl lag`: what a running exchange says about
//! itself on `GET /health`, for an operator's terminal or a script.

use std::process::ExitCode;

use serde_json::Value;

use crate::http::Server;

fn fetch(server: &str) -> Result<Value, String> {
    let server = Server::parse(server)?;
    let (status, health) = server.get("/health")?;
    if status != 200 && status != 503 {
        return Err(format!("GET /health answered {status}: {health}"));
    }
    if !health.is_object() {
        return Err(format!("GET /health answered something that is not the exchange's health: {health}"));
    }
    Ok(health)
}

fn number(value: &Value, name: &str) -> u64 {
    value[name].as_u64().unwrap_or(0)
}

/// Prints the health; exit status 0 ok, 1 degraded (the history database
/// is behind or away: trading goes on), 3 the journal failed (orders are
/// refused). An exchange that cannot be reached is an error (status 2).
pub fn health(server: &str, json: bool) -> Result<ExitCode, String> {
    let health = fetch(server)?;
    let status = health["status"].as_str().unwrap_or("unknown").to_string();
    if json {
        println!("{health}");
    } else {
        println!("status      {status}");
        if let Some(reason) = health["reason"].as_str() {
            println!("reason      {reason}");
        }
        println!(
            "sequence    {} (durable {}, snapshot {})",
            number(&health, "seq"),
            number(&health, "durable_seq"),
            number(&health, "snapshot_seq")
        );
        println!(
            "snapshot    the matcher stopped {} us for the last one",
            number(&health, "snapshot_stall_us")
        );
        println!("websocket   {} connections", number(&health, "ws_connections"));
        println!("database    {}", database_line(&health["database"]));
    }
    Ok(match status.as_str() {
        "ok" => ExitCode::SUCCESS,
        "degraded" => ExitCode::from(1),
        _ => ExitCode::from(3),
    })
}

fn database_line(database: &Value) -> String {
    if database.is_null() {
        return "not configured".to_string();
    }
    let mut line =
        if database["connected"].as_bool() == Some(true) { "connected" } else { "not connected" }.to_string();
    match (database["lag_seq"].as_u64(), database["lag_ms"].as_u64()) {
        (Some(seq), Some(ms)) => line.push_str(&format!(", {seq} commands ({ms} ms) behind")),
        (Some(seq), None) => line.push_str(&format!(", {seq} commands behind")),
        _ => line.push_str(", lag unknown"),
    }
    if let Some(written) = database["written_seq"].as_u64() {
        line.push_str(&format!(", written up to {written}"));
    }
    if let Some(error) = database["last_error"].as_str() {
        line.push_str(&format!("; last error: {error}"));
    }
    line
}

/// Prints how far each follower of the matcher is behind it: the journal's
/// sync, the newest snapshot, the history database.
pub fn lag(server: &str, json: bool) -> Result<ExitCode, String> {
    let health = fetch(server)?;
    let seq = number(&health, "seq");
    let durable = number(&health, "durable_seq");
    let snapshot = number(&health, "snapshot_seq");
    let database = &health["database"];
    if json {
        let lag = serde_json::json!({
            "seq": seq,
            "durable_lag_seq": seq.saturating_sub(durable),
            "snapshot_lag_seq": seq.saturating_sub(snapshot),
            "database_lag_seq": database["lag_seq"],
            "database_lag_ms": database["lag_ms"],
        });
        println!("{lag}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("sequence    {seq}");
    println!(
        "journal     {} commands not yet durable (durable up to {durable})",
        seq.saturating_sub(durable)
    );
    println!("snapshot    {} commands since the newest (at {snapshot})", seq.saturating_sub(snapshot));
    println!("database    {}", database_line(database));
    Ok(ExitCode::SUCCESS)
}
