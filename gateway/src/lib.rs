//! The exchange server (`exchange`): configuration, the disruptor pipeline
//! around the single matcher thread, the REST API with request signing, and
//! the read views the API serves.
//!
//! # What this crate owns
//!
//! Everything between a socket and the engine: parsing and validating
//! requests at the edge (decimal strings in, exact integers to the engine),
//! authentication, the inbound and outbound rings, the matcher thread (the
//! only owner of trading state), journaling before acknowledgement,
//! periodic snapshots, and the views that answer reads.
//!
//! # What it must never do
//!
//! Block the async runtime on the matcher (a full ring is answered 503 at
//! once), acknowledge a command before it is journaled under the configured
//! policy, touch the engine from a request handler, or let a user see or
//! change another user's orders or balances.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), gateway::ServerError> {
//! let config = gateway::Config::load(None, std::env::vars()).expect("configuration");
//! gateway::run(config, async { let _ = tokio::signal::ctrl_c().await; }, |addresses| {
//!     println!("listening on {}", addresses.rest);
//! })
//! .await
//! # }
//! ```

pub mod amounts;
mod app;
pub mod auth;
pub mod binance;
mod clock;
mod cluster;
pub mod config;
pub mod error;
mod exposition;
mod history;
mod http;
pub mod images;
pub mod log;
pub mod metrics;
pub mod outcome;
pub mod pipeline;
mod query;
mod response;
pub mod rest;
mod server;
mod state;
pub mod subscribers;
pub mod views;
mod wait;
pub mod ws;

pub use config::Config;
pub use server::{run, Addresses, ServerError};
