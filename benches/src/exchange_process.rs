//! Real `exchange` processes started by a benchmark: a single node, or the
//! members of a cluster on loopback, each with its own data directory;
//! killed with SIGKILL and restarted on the same directory.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The admin token every process started here is given.
pub const ADMIN_TOKEN: &str = "benchmark-admin-token-0123456789";

/// The settings that keep the exchange's own limits out of a load
/// benchmark's way: the load comes from few keys and one address.
const UNLIMITED: &[(&str, &str)] = &[
    ("EXCHANGE_RATE_LIMIT_PER_S", "1000000"),
    ("EXCHANGE_RATE_LIMIT_BURST", "1000000"),
    ("EXCHANGE_REQUEST_WEIGHT_PER_MINUTE", "1000000000000"),
];

/// The `exchange` binary: `explicit` when given, else the one next to this
/// benchmark's executable (both are built into the same `target/release`).
pub fn exchange_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name("exchange"),
    };
    if !path.is_file() {
        return Err(format!(
            "no exchange binary at {}: build it with `cargo build --release -p gateway --bin exchange` \
             or name it with --exchange PATH",
            path.display()
        ));
    }
    Ok(path)
}

/// A port that was free a moment ago, for a configuration that must name
/// its ports before the processes start.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One `exchange` process; dropping it kills it.
pub struct ExchangeProcess {
    binary: PathBuf,
    config_path: Option<PathBuf>,
    env: Vec<(String, String)>,
    stderr_path: PathBuf,
    child: Option<Child>,
    /// Its REST address, as it printed it.
    pub rest: SocketAddr,
}

impl ExchangeProcess {
    /// Starts `binary` with `config_path` (if any) and `env` (more
    /// `EXCHANGE_*` settings), its stderr appended to `stderr_path`, and
    /// waits until it listens.
    pub fn start(
        binary: &Path,
        config_path: Option<&Path>,
        env: &[(&str, &str)],
        stderr_path: &Path,
    ) -> Result<ExchangeProcess, String> {
        let mut process = ExchangeProcess {
            binary: binary.to_path_buf(),
            config_path: config_path.map(Path::to_path_buf),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            stderr_path: stderr_path.to_path_buf(),
            child: None,
            rest: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        process.restart()?;
        Ok(process)
    }

    /// Starts the process again (after [`kill`](Self::kill)) on the same
    /// configuration and data directory.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("the process runs already".to_string());
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| format!("{}: {e}", self.stderr_path.display()))?;
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config_path {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env_remove("DATABASE_URL")
            .env_remove("EXCHANGE_DATABASE_URL")
            .env("EXCHANGE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("EXCHANGE_LOG_LEVEL", "warn")
            .envs(UNLIMITED.iter().copied())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Some(rest) = line.trim().strip_prefix("listening on ").and_then(|a| a.parse().ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the exchange did not start ({line:?}); its stderr is in {}",
                self.stderr_path.display()
            ));
        };
        // Keep reading stdout so that the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        self.rest = rest;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }
}

impl Drop for ExchangeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The configuration files of a cluster of `size` nodes on loopback, under
/// `dir` (`node<N>.toml`, data in `node<N>/`); node 1 forms the cluster.
/// Each node's REST and Raft ports are fixed in the files (every member
/// names the others'). `cluster_settings` (TOML lines, e.g.
/// `snapshot_every_entries = 0`) go into every node's `[cluster]` table.
/// The configuration files and REST addresses, by node.
pub fn write_cluster_configs(
    dir: &Path,
    size: u64,
    cluster_settings: &str,
) -> Result<Vec<(PathBuf, SocketAddr)>, String> {
    let mut ports = Vec::new();
    for _ in 0..size {
        ports.push((free_port()?, free_port()?));
    }
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, (api, raft))| {
            format!("  {{ id = {}, raft = \"127.0.0.1:{raft}\", api = \"127.0.0.1:{api}\" }},\n", i + 1)
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, (api, raft)) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let config_path = dir.join(format!("node{id}.toml"));
        let text = format!(
            "listen = \"127.0.0.1:{api}\"\nws_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
             durability = \"replicated\"\n\
             [cluster]\nnode_id = {id}\nraft_listen = \"127.0.0.1:{raft}\"\nbootstrap = {}\n\
             members = [\n{members}]\n{cluster_settings}\n",
            dir.join(format!("node{id}")).display(),
            id == 1
        );
        std::fs::write(&config_path, text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        nodes.push((config_path, SocketAddr::from(([127, 0, 0, 1], *api))));
    }
    Ok(nodes)
}
