//! A throwaway PostgreSQL for tests and benchmarks.
//!
//! [`Database::throwaway`] gives each caller a database of its own: on the
//! server named by `DATABASE_URL` when that is set, otherwise on a private
//! cluster that it starts (`initdb` and `pg_ctl` from the PostgreSQL server
//! binaries, on a free loopback port, in a temporary directory, as the
//! `postgres` user when running as root). Dropping the [`Database`] drops
//! the database or stops and removes the cluster.
//!
//! Without server binaries and without `DATABASE_URL` this is an error that
//! says how to install them; tests fail with it rather than skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a starting server may take before we give up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A database that exists for as long as this value does.
pub struct Database {
    /// Connection string in the key=value form tokio-postgres accepts.
    pub url: String,
    /// The name of the database within the server.
    pub name: String,
    owner: Owner,
}

enum Owner {
    /// A cluster of our own; stopped and removed on drop.
    Cluster(Cluster),
    /// A database on an existing server (`DATABASE_URL`); dropped on drop.
    External { admin_url: String },
}

/// A private PostgreSQL server process and its data directory.
pub struct Cluster {
    bin_dir: PathBuf,
    root: tempfile::TempDir,
    data_dir: PathBuf,
    pub port: u16,
    as_postgres_user: bool,
}

#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

impl Database {
    /// A fresh, empty database: on `DATABASE_URL`'s server if set, else on
    /// a new private cluster.
    pub fn throwaway() -> Result<Database, ClusterError> {
        match std::env::var("DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => Database::on_server(admin_url),
            _ => Database::on_own_cluster(),
        }
    }

    /// A database on a private cluster, which the caller may stop and start
    /// (see [`Database::cluster`]).
    pub fn on_own_cluster() -> Result<Database, ClusterError> {
        let cluster = Cluster::start()?;
        let url = cluster.url("postgres");
        Ok(Database { url, name: "postgres".to_string(), owner: Owner::Cluster(cluster) })
    }

    fn on_server(admin_url: String) -> Result<Database, ClusterError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "exchange_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
        let url = with_dbname(&admin_url, &name);
        Ok(Database { url, name, owner: Owner::External { admin_url } })
    }

    /// The URL of this database for another role (tests of a role
    /// without rights).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        with_user(&self.url, user, password)
    }

    /// The private cluster, when this database has one.
    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.owner {
            Owner::Cluster(cluster) => Some(cluster),
            Owner::External { .. } => None,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Owner::External { admin_url } = &self.owner {
            let _ = psql(admin_url, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// The URL with its database replaced by `name` (URL or key=value form).
fn with_dbname(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority_end..].find('/') {
            Some(slash) => &base[..authority_end + slash],
            None => base,
        };
        match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        }
    } else {
        format!("{url} dbname={name}")
    }
}

/// The URL with its user and password replaced (URL or key=value form).
fn with_user(url: &str, user: &str, password: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let host_and_rest = rest.split_once('@').map_or(rest, |(_, after)| after);
        format!("{scheme}://{user}:{password}@{host_and_rest}")
    } else {
        // In the key=value form a later setting replaces an earlier one.
        format!("{url} user={user} password={password}")
    }
}

fn psql(url: &str, sql: &str) -> Result<(), ClusterError> {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map_err(|e| ClusterError(format!("running psql failed: {e}")))?;
    check(output, "psql")
}

fn check(output: Output, what: &str) -> Result<(), ClusterError> {
    if output.status.success() {
        Ok(())
    } else {
        Err(ClusterError(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Where the PostgreSQL server binaries are: `PG_BINDIR`, `pg_config
/// --bindir`, or Debian's versioned directories.
pub fn server_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect())
        .unwrap_or_default();
    versions.sort();
    if let Some(dir) = versions.into_iter().rev().find(|dir| has_initdb(dir)) {
        return Ok(dir);
    }
    Err(ClusterError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found and DATABASE_URL is not set. Install them \
         (Debian: `apt-get install postgresql`; the binaries land in /usr/lib/postgresql/<version>/bin), \
         set PG_BINDIR to their directory, or set DATABASE_URL to a server where databases may be created."
            .to_string(),
    ))
}

fn free_port() -> Result<u16, ClusterError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError(format!("no free local port: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| ClusterError(format!("no free local port: {e}")))
}

impl Cluster {
    /// Creates and starts a private cluster. Durability settings are off:
    /// it serves tests and benchmarks, and survives process kills (the
    /// kernel keeps its writes), not power loss.
    pub fn start() -> Result<Cluster, ClusterError> {
        let bin_dir = server_bin_dir()?;
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        let root = tempfile::Builder::new()
            .prefix("exchange-pg-")
            .tempdir()
            .map_err(|e| ClusterError(format!("cannot create a temporary directory: {e}")))?;
        let data_dir = root.path().join("data");
        if as_postgres_user {
            // initdb refuses to run as root; the server's files belong to `postgres`.
            let status = Command::new("chown")
                .args(["postgres:postgres", &root.path().to_string_lossy()])
                .status()
                .map_err(|e| ClusterError(format!("chown failed: {e}")))?;
            if !status.success() {
                return Err(ClusterError(
                    "cannot hand the cluster directory to the postgres user (does it exist?)".to_string(),
                ));
            }
        }
        let mut cluster = Cluster { bin_dir, root, data_dir, port: 0, as_postgres_user };
        let data = cluster.data_dir.to_string_lossy().into_owned();
        let output = cluster
            .command("initdb")
            .args(["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .map_err(|e| ClusterError(format!("running initdb failed: {e}")))?;
        check(output, "initdb")?;
        let mut last_error = ClusterError("the cluster did not start".to_string());
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn start_server(&self) -> Result<(), ClusterError> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let log = self.root.path().join("server.log").to_string_lossy().into_owned();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.root.path().display()
        );
        let output = self
            .command("pg_ctl")
            .args(["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"])
            .output()
            .map_err(|e| ClusterError(format!("running pg_ctl failed: {e}")))?;
        if let Err(error) = check(output, "pg_ctl start") {
            let log = std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default();
            return Err(ClusterError(format!("{error}\nserver log:\n{log}")));
        }
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ClusterError(format!("the server on port {} did not answer", self.port)))
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill_server(&self) -> Result<(), ClusterError> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let output = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output()
            .map_err(|e| ClusterError(format!("running pg_ctl failed: {e}")))?;
        check(output, "pg_ctl stop")
    }

    pub fn url(&self, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={dbname}", self.port)
    }

    /// The server's processes: the postmaster (from `postmaster.pid`) and
    /// its children.
    pub fn server_pids(&self) -> Vec<i32> {
        let Some(postmaster) = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().and_then(|line| line.trim().parse::<i32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
                // The parent pid is the second field after the parenthesised name.
                let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
                if parent.and_then(|p| p.parse::<i32>().ok()) == Some(postmaster) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Freezes the server (SIGSTOP to every process of it): it holds its
    /// connections and answers nothing, as a hung database does.
    pub fn pause(&self) -> Result<(), ClusterError> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused server run again.
    pub fn resume(&self) -> Result<(), ClusterError> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: i32) -> Result<(), ClusterError> {
        let pids = self.server_pids();
        if pids.is_empty() {
            return Err(ClusterError("the server's processes are not known (no postmaster.pid)".to_string()));
        }
        for pid in pids {
            // Safety: sending a signal to a process of our own cluster.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.kill_server();
    }
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn replaces_the_database_in_either_url_form() {
        assert_eq!(
            with_dbname("postgres://u:p@h:5/db?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_dbname("postgresql://h", "x"), "postgresql://h/x");
        assert_eq!(with_dbname("host=h user=u", "x"), "host=h user=u dbname=x");
    }

    #[test]
    fn replaces_the_user_in_either_url_form() {
        use super::with_user;
        assert_eq!(with_user("postgres://u:p@h:5/db", "r", "s"), "postgres://r:s@h:5/db");
        assert_eq!(with_user("postgresql://h/db", "r", "s"), "postgresql://r:s@h/db");
        assert_eq!(with_user("host=h user=u", "r", "s"), "host=h user=u user=r password=s");
    }
}
