//! Commit latency of a 3-node cluster on loopback, in one process, with the real log store
//! (journal segments, fdatasync on every node) and the engine state machine.
//!
//! ```text
//! cargo run --release -p replication --example commit_latency -- [writes] [batch_commands]
//! ```
//!
//! Prints HdrHistogram percentiles of `client_write` (propose -> committed on a majority ->
//! applied on the leader) for sequential writes of one batch each, and, for scale, of one bare
//! `write + fdatasync` of a small record in the same directory (the single-node `batch`
//! policy's floor). The data lives in a temporary directory under `$TMPDIR`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::{Command, EngineLimits};
use hdrhistogram::Histogram;
use replication::{
    net, Batch, EngineStateMachine, ExchangeNode, ExchangeRaft, LogStore, LogStoreConfig, NetConfig,
    NetworkFactory, Origin, Proposal,
};

fn print(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n {} p50 {} us p90 {} us p99 {} us p99.9 {} us max {} us",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    let batch_commands: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let root = tempfile::tempdir()?;

    // The floor: one small write + fdatasync, as the single-node journal pays per batch.
    let mut bare = Histogram::<u64>::new(3)?;
    let mut file = std::fs::File::create(root.path().join("bare.log"))?;
    for _ in 0..writes.min(1_000) {
        let t = Instant::now();
        file.write_all(&[7u8; 128])?;
        file.sync_data()?;
        bare.record(t.elapsed().as_micros() as u64)?;
    }

    let config = Arc::new(replication::raft_config()?);
    let mut rafts = Vec::new();
    let mut members = BTreeMap::new();
    let mut servers = Vec::new();
    for id in 1..=3u64 {
        let dir = root.path().join(format!("n{id}"));
        let log = LogStore::open(&dir.join("journal"), LogStoreConfig::default())?;
        let sm = EngineStateMachine::open(&dir.join("snapshots"), EngineLimits::default())?;
        let (listener, addr) = net::bind("127.0.0.1:0").await?;
        let raft =
            ExchangeRaft::new(id, config.clone(), NetworkFactory::new(id, NetConfig::default()), log, sm)
                .await?;
        servers.push(tokio::spawn(net::serve(raft.clone(), listener, NetConfig::default())));
        members.insert(id, ExchangeNode { raft_addr: addr.to_string(), api_addr: String::new() });
        rafts.push(raft);
    }
    rafts[0].initialize(members).await?;
    // A leader that has heard from a quorum in its term (before that, openraft refuses writes
    // with LeaseExpired).
    let leader = loop {
        if let Some(leader) = rafts.iter().find(|r| r.as_leader().is_ok()) {
            if leader.ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex).await.is_ok() {
                break leader.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut seq = 0u64;
    let mut next_batch = || {
        let commands = (0..batch_commands)
            .map(|_| {
                seq += 1;
                Proposal {
                    origin: Origin { node: 0, incarnation: 0, request: seq },
                    timestamp_ns: seq,
                    command: Command::CreateUser,
                    replay_mark: None,
                }
            })
            .collect();
        Batch::Commands(commands)
    };
    // Warm up (connections, first segment pages).
    for _ in 0..100 {
        leader.client_write(next_batch()).await?;
    }
    let mut committed = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for _ in 0..writes {
        let batch = next_batch();
        let t = Instant::now();
        leader.client_write(batch).await?;
        committed.record(t.elapsed().as_micros() as u64)?;
    }
    let elapsed = started.elapsed();
    print("bare write + fdatasync (one file)", &bare);
    print(&format!("3-node client_write, batch of {batch_commands}, fdatasync on every node"), &committed);
    println!(
        "{writes} sequential writes in {elapsed:?}: {:.0} batches/s, {:.0} commands/s",
        writes as f64 / elapsed.as_secs_f64(),
        (writes as u64 * batch_commands) as f64 / elapsed.as_secs_f64()
    );
    for server in servers {
        server.abort();
    }
    for raft in rafts {
        raft.shutdown().await.ok();
    }
    Ok(())
}
