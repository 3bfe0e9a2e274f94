//! The Raft transport: openraft's RPCs as length-prefixed frames over plain TCP.
//!
//! ```text
//! frame: len u32 LE | codec(Request or Response), len <= NetConfig::frame_bytes_max
//! ```
//!
//! One connection per [`PeerClient`] (openraft makes one client per target and use: log
//! replication, heartbeats and snapshots each get their own), requests serial on it, each
//! answered by exactly one response. A snapshot travels as a `SnapshotBegin` frame and
//! chunk frames on its connection, answered once at the end.
//!
//! # Failure rules
//!
//! * A client whose call times out or fails drops its connection and reconnects on the next
//!   call: a late answer on a kept connection would be read as the answer to the next request.
//! * The server ([`serve`]) treats every byte as hostile: a frame longer than the limit (checked
//!   before allocating), a frame cut short, a frame that does not decode, a request out of
//!   place in a snapshot stream, or a frame that starts but does not finish within
//!   `frame_read_timeout_ms`: it logs a warning naming the peer and the fault, closes that
//!   connection, and keeps serving the others.
//! * No authentication: bind the listener to a private interface.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderId;
use openraft::RaftNetworkV2;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::gate::FreshNodeGate;
use crate::state_machine::check_image_envelope;
use crate::types::{ExchangeNode, ExchangeRaft, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};

/// The transport's limits. Both ends of a connection should use the same values.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The largest frame either side sends or accepts, in bytes. An append request carries at
    /// most `Config::max_payload_entries` entries of at most 256 KiB each.
    pub frame_bytes_max: u32,
    /// The size of one snapshot chunk frame's data, in bytes.
    pub snapshot_chunk_bytes: usize,
    /// The largest snapshot image the server accepts, in bytes (refused before it is received).
    pub snapshot_bytes_max: u64,
    /// Once the first byte of a frame has arrived, the rest must arrive within this many
    /// milliseconds (a peer that stalls mid-frame is cut off). Between frames a connection may
    /// idle: openraft keeps its connections for the next heartbeat or snapshot.
    pub frame_read_timeout_ms: u64,
    /// Connections the server serves at once; more are closed at once with a warning.
    pub connections_max: usize,
    /// The local address this node's connections to its peers come from (`None`: the
    /// system's choice). A node sets it to its Raft listener's address, so that firewall
    /// rules (and the partition tests) can tell its traffic from another node's on one host.
    pub bind_outgoing: Option<std::net::IpAddr>,
    /// What the server lets through to Raft from a node whose log was new at start: votes,
    /// appends and snapshots (see [`FreshNodeGate`]). Always open on a node that remembers.
    pub gate: FreshNodeGate,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            frame_bytes_max: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_max: crate::state_machine::IMAGE_BYTES_MAX,
            frame_read_timeout_ms: 10_000,
            connections_max: 256,
            bind_outgoing: None,
            gate: FreshNodeGate::new(false),
        }
    }
}

/// What a client sends.
#[derive(Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A snapshot of `image_bytes` bytes follows in `SnapshotChunk` frames.
    SnapshotBegin {
        vote: Vote,
        meta: SnapshotMeta,
        image_bytes: u64,
    },
    SnapshotChunk(Vec<u8>),
    /// The current term of the server (see [`crate::gate`]); answered by the transport, so
    /// that a node answers it whatever its Raft is doing.
    TermQuery,
}

/// What the server answers, one per request (one per whole snapshot).
#[derive(Serialize, Deserialize)]
enum Response {
    Append(Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>),
    Vote(Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>),
    PreVote(Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>),
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>>),
    Snapshot(Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>),
    /// The server refused the snapshot without installing it (the reason says why).
    SnapshotRefused(String),
    Term(u64),
    /// The server's gate kept an append from Raft (the reason says why): to the leader, the
    /// node is unreachable for now.
    AppendRefused(String),
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between frames (not a fault).
    Closed,
    Io(io::Error),
    Oversize {
        len: u32,
        max: u32,
    },
    Truncated {
        len: u32,
    },
    Stalled {
        timeout_ms: u64,
    },
    Decode(codec::Error),
    Encode(codec::Error),
    /// A frame that decodes but does not belong where it came.
    Protocol(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
            FrameError::Oversize { len, max } => {
                write!(f, "frame of {len} bytes is over the {max}-byte limit (frame_bytes_max)")
            }
            FrameError::Truncated { len } => write!(f, "frame of {len} bytes was cut short by the peer"),
            FrameError::Stalled { timeout_ms } => {
                write!(f, "frame not complete within {timeout_ms} ms (frame_read_timeout_ms)")
            }
            FrameError::Decode(e) => write!(f, "frame does not decode: {e}"),
            FrameError::Encode(e) => write!(f, "frame could not be encoded: {e}"),
            FrameError::Protocol(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

fn encode_frame<T: Serialize>(value: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut bytes = vec![0u8; 4];
    codec::encode_append(value, &mut bytes).map_err(FrameError::Encode)?;
    let len = bytes.len() - 4;
    if len > max as usize {
        return Err(FrameError::Oversize { len: u32::try_from(len).unwrap_or(u32::MAX), max });
    }
    bytes[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(bytes)
}

/// Reads one frame. Waits for its first byte for as long as `first_byte_timeout` allows (None:
/// forever), then for the rest within `rest_timeout`. The length is checked against `max`
/// before anything is allocated.
async fn read_frame(
    stream: &mut TcpStream,
    max: u32,
    first_byte_timeout: Option<Duration>,
    rest_timeout: Duration,
) -> Result<Vec<u8>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let first = stream.read(&mut len_bytes[..1]);
    let n = match first_byte_timeout {
        Some(t) => tokio::time::timeout(t, first)
            .await
            .map_err(|_| FrameError::Stalled { timeout_ms: t.as_millis() as u64 })?,
        None => first.await,
    }
    .map_err(FrameError::Io)?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    let rest = async {
        stream.read_exact(&mut len_bytes[1..]).await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated { len: 0 },
            _ => FrameError::Io(e),
        })?;
        let len = u32::from_le_bytes(len_bytes);
        if len > max {
            return Err(FrameError::Oversize { len, max });
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body).await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated { len },
            _ => FrameError::Io(e),
        })?;
        Ok(body)
    };
    tokio::time::timeout(rest_timeout, rest)
        .await
        .map_err(|_| FrameError::Stalled { timeout_ms: rest_timeout.as_millis() as u64 })?
}

// ------------------------------------------------------------------------------------------
// Client side
// ------------------------------------------------------------------------------------------

/// Makes a [`PeerClient`] per target for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    node_id: u64,
    config: Arc<NetConfig>,
}

impl NetworkFactory {
    /// The factory of node `node_id` (named in timeout errors).
    pub fn new(node_id: u64, config: NetConfig) -> NetworkFactory {
        NetworkFactory { node_id, config: Arc::new(config) }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &ExchangeNode) -> PeerClient {
        PeerClient {
            node_id: self.node_id,
            target,
            addr: node.raft_addr.clone(),
            config: self.config.clone(),
            conn: None,
        }
    }
}

/// One connection to one peer, opened on first use and after any failure.
pub struct PeerClient {
    node_id: u64,
    target: u64,
    addr: String,
    config: Arc<NetConfig>,
    conn: Option<TcpStream>,
}

/// How a call failed, before it is dressed as openraft's error for the RPC at hand.
enum CallError {
    Connect(io::Error),
    Frame(FrameError),
    TimedOut(Duration),
    /// The peer answered with a response of another kind.
    Mismatch,
}

impl CallError {
    fn into_rpc(self, client: &PeerClient, action: RPCTypes) -> RPCError<TypeConfig> {
        match self {
            CallError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Frame(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::TimedOut(timeout) => {
                RPCError::Timeout(Timeout { action, id: client.node_id, target: client.target, timeout })
            }
            CallError::Mismatch => RPCError::Network(NetworkError::from_string(format!(
                "peer {} at {} answered {action} with another kind of response",
                client.target, client.addr
            ))),
        }
    }
}

/// Connects to `addr` from the local address `local` (any port).
async fn connect_from(local: std::net::IpAddr, addr: &str) -> io::Result<TcpStream> {
    let mut last_error = None;
    for target in tokio::net::lookup_host(addr).await? {
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to nothing"))))
}

impl PeerClient {
    async fn connection(&mut self) -> Result<&mut TcpStream, CallError> {
        if self.conn.is_none() {
            let stream = match self.config.bind_outgoing {
                None => TcpStream::connect(&self.addr).await.map_err(CallError::Connect)?,
                Some(local) => connect_from(local, &self.addr).await.map_err(CallError::Connect)?,
            };
            // Raft messages are small and latency-bound: never wait to coalesce them.
            stream.set_nodelay(true).map_err(CallError::Connect)?;
            self.conn = Some(stream);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Sends `frames` and reads one response, all within `ttl`; any failure drops the
    /// connection.
    async fn exchange(&mut self, frames: Vec<Vec<u8>>, ttl: Duration) -> Result<Response, CallError> {
        let max = self.config.frame_bytes_max;
        let rest_timeout = Duration::from_millis(self.config.frame_read_timeout_ms);
        let attempt = async {
            let stream = self.connection().await?;
            for frame in &frames {
                stream.write_all(frame).await.map_err(|e| CallError::Frame(FrameError::Io(e)))?;
            }
            let reply = read_frame(stream, max, None, rest_timeout).await.map_err(CallError::Frame)?;
            codec::decode::<Response>(&reply).map_err(|e| CallError::Frame(FrameError::Decode(e)))
        };
        let result = match tokio::time::timeout(ttl, attempt).await {
            Ok(result) => result,
            Err(_) => Err(CallError::TimedOut(ttl)),
        };
        if result.is_err() {
            // The answer may still come: never read it as the next call's.
            self.conn = None;
        }
        result
    }

    async fn call(
        &mut self,
        request: &Request,
        action: RPCTypes,
        ttl: Duration,
    ) -> Result<Response, RPCError<TypeConfig>> {
        let frame = encode_frame(request, self.config.frame_bytes_max)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match self.exchange(vec![frame], ttl).await {
            Ok(response) => Ok(response),
            Err(e) => {
                let error = e.into_rpc(self, action);
                tracing::debug!(target = self.target, addr = %self.addr, %action, error = %error, "raft rpc failed");
                Err(error)
            }
        }
    }

    fn mismatch(&mut self, action: RPCTypes) -> RPCError<TypeConfig> {
        self.conn = None;
        CallError::Mismatch.into_rpc(self, action)
    }
}

/// A remote node's fatal error (it is shutting down): back off and try again later.
fn remote_fatal<E: std::error::Error + 'static>(e: &E) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(e))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&Request::Append(rpc), RPCTypes::AppendEntries, option.soft_ttl()).await? {
            Response::Append(result) => result.map_err(|e| remote_fatal(&e)),
            Response::AppendRefused(reason) => {
                tracing::debug!(target = self.target, %reason, "peer refused an append");
                Err(RPCError::Unreachable(Unreachable::from_string(reason)))
            }
            _ => Err(self.mismatch(RPCTypes::AppendEntries)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&Request::Vote(rpc), RPCTypes::Vote, option.soft_ttl()).await? {
            Response::Vote(result) => result.map_err(|e| remote_fatal(&e)),
            _ => Err(self.mismatch(RPCTypes::Vote)),
        }
    }

    /// Asked for real: openraft's default grants every pre-vote, which would let a node
    /// partitioned away disrupt the cluster when it returns. An unreachable peer is an error,
    /// never a grant.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&Request::PreVote(rpc), RPCTypes::Vote, option.soft_ttl()).await? {
            Response::PreVote(result) => result.map_err(|e| remote_fatal(&e)),
            _ => Err(self.mismatch(RPCTypes::Vote)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&Request::TransferLeader(req), RPCTypes::TransferLeader, option.soft_ttl()).await? {
            Response::TransferLeader(result) => result.map_err(|e| remote_fatal(&e)),
            _ => Err(self.mismatch(RPCTypes::TransferLeader)),
        }
    }

    /// Streams the image in `snapshot_chunk_bytes` chunks on this client's own connection;
    /// `cancel` (replication closed) stops it between any two writes and drops the connection.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let image = snapshot.snapshot.into_inner();
        let max = self.config.frame_bytes_max;
        let encode = |request: &Request| encode_frame(request, max).map_err(|e| NetworkError::new(&e));
        let mut frames = vec![encode(&Request::SnapshotBegin {
            vote,
            meta: snapshot.meta.clone(),
            image_bytes: image.len() as u64,
        })?];
        for chunk in image.chunks(self.config.snapshot_chunk_bytes.max(1)) {
            frames.push(encode(&Request::SnapshotChunk(chunk.to_vec()))?);
        }
        let ttl = option.soft_ttl();
        let outcome = {
            let exchange = self.exchange(frames, ttl);
            tokio::select! {
                closed = cancel => Err(closed),
                result = exchange => Ok(result),
            }
        };
        match outcome {
            Err(closed) => {
                self.conn = None;
                tracing::debug!(target = self.target, snapshot = ?snapshot.meta.last_log_id, "snapshot send cancelled");
                Err(StreamingError::Closed(closed))
            }
            Ok(Err(e)) => Err(e.into_rpc(self, RPCTypes::InstallSnapshot).into()),
            Ok(Ok(Response::Snapshot(result))) => {
                result.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Ok(Response::SnapshotRefused(reason))) => {
                tracing::warn!(target = self.target, snapshot = ?snapshot.meta.last_log_id, %reason, "peer refused a snapshot");
                Err(StreamingError::Unreachable(Unreachable::from_string(reason)))
            }
            Ok(Ok(_)) => Err(self.mismatch(RPCTypes::InstallSnapshot).into()),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Server side
// ------------------------------------------------------------------------------------------

/// Serves Raft RPCs from `listener` to `raft` until this future is dropped (aborting the
/// task that runs it closes the listener and every connection: a stopped node answers
/// nothing). Each connection is its own task; a faulty one is closed with a warning and the
/// others go on.
pub async fn serve<SM>(raft: ExchangeRaft<SM>, listener: TcpListener, config: NetConfig)
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.connections_max));
    // Owned here, so that dropping this future aborts every connection task.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: not fatal, but do
                // not spin on it.
                tracing::warn!(error = %e, "raft listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, connections_max = config.connections_max, "raft listener: too many connections, closing this one");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(%peer, error = %e, "raft listener: cannot set TCP_NODELAY, closing the connection");
            continue;
        }
        let raft = raft.clone();
        let config = config.clone();
        connections.spawn(async move {
            match serve_connection(&raft, stream, &config).await {
                Ok(()) | Err(FrameError::Closed) => tracing::debug!(%peer, "raft connection closed"),
                Err(e) => tracing::warn!(%peer, fault = %e, "raft connection closed on a faulty frame"),
            }
            drop(slot);
        });
    }
}

async fn serve_connection<SM>(
    raft: &ExchangeRaft<SM>,
    mut stream: TcpStream,
    config: &NetConfig,
) -> Result<(), FrameError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let max = config.frame_bytes_max;
    let rest_timeout = Duration::from_millis(config.frame_read_timeout_ms);
    loop {
        let frame = read_frame(&mut stream, max, None, rest_timeout).await?;
        let request: Request = codec::decode(&frame).map_err(FrameError::Decode)?;
        let response = match request {
            Request::Append(rpc) => match config.gate.admits_leader(rpc.vote.leader_id().term()) {
                Ok(()) => Response::Append(raft.append_entries(rpc).await),
                Err(reason) => {
                    tracing::debug!(leader = ?rpc.vote, %reason, "refusing an append");
                    Response::AppendRefused(reason)
                }
            },
            Request::Vote(rpc) if !config.gate.votes_open() => {
                tracing::debug!(candidate = ?rpc.vote, "refusing a vote: this node has not caught up since its disk was new");
                Response::Vote(Ok(refuse_vote(&rpc)))
            }
            Request::PreVote(rpc) if !config.gate.votes_open() => Response::PreVote(Ok(refuse_vote(&rpc))),
            Request::TermQuery => {
                Response::Term(config.gate.answer_term(raft.metrics().borrow_watched().current_term))
            }
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
            Request::PreVote(rpc) => Response::PreVote(raft.pre_vote(rpc).await),
            Request::TransferLeader(req) => Response::TransferLeader(raft.handle_transfer_leader(req).await),
            Request::SnapshotBegin { vote, meta, image_bytes } => {
                receive_snapshot(raft, &mut stream, config, vote, meta, image_bytes).await?
            }
            Request::SnapshotChunk(_) => {
                return Err(FrameError::Protocol("snapshot chunk without a snapshot begin"))
            }
        };
        let reply = encode_frame(&response, max)?;
        stream.write_all(&reply).await.map_err(FrameError::Io)?;
    }
}

async fn receive_snapshot<SM>(
    raft: &ExchangeRaft<SM>,
    stream: &mut TcpStream,
    config: &NetConfig,
    vote: Vote,
    meta: SnapshotMeta,
    image_bytes: u64,
) -> Result<Response, FrameError>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    if image_bytes > config.snapshot_bytes_max {
        // Refused before a byte of it is held; the chunks that follow would be out of place,
        // so the connection goes too.
        return Err(FrameError::Protocol("snapshot larger than snapshot_bytes_max"));
    }
    let timeout = Duration::from_millis(config.frame_read_timeout_ms);
    // Grown as chunks arrive, never sized from the peer's claim alone.
    let mut image = Vec::with_capacity(config.snapshot_chunk_bytes.min(image_bytes as usize));
    while (image.len() as u64) < image_bytes {
        let frame = read_frame(stream, config.frame_bytes_max, Some(timeout), timeout).await?;
        match codec::decode::<Request>(&frame).map_err(FrameError::Decode)? {
            Request::SnapshotChunk(chunk) => {
                if image.len() as u64 + chunk.len() as u64 > image_bytes {
                    return Err(FrameError::Protocol("snapshot chunks longer than the announced size"));
                }
                image.extend_from_slice(&chunk);
            }
            _ => return Err(FrameError::Protocol("a request inside a snapshot stream")),
        }
    }
    if let Err(reason) = config.gate.admits_leader(vote.leader_id().term()) {
        tracing::debug!(leader = ?vote, %reason, "refusing a snapshot");
        return Ok(Response::SnapshotRefused(reason));
    }
    // Transport damage and foreign bytes stop here; the state machine decodes the rest.
    if let Err(e) = check_image_envelope(&image) {
        tracing::warn!(snapshot = ?meta.last_log_id, error = %e, "refusing a received snapshot");
        return Ok(Response::SnapshotRefused(e.to_string()));
    }
    let snapshot = Snapshot { meta, snapshot: SnapshotData::new(image) };
    Ok(Response::Snapshot(raft.install_full_snapshot(vote, snapshot).await))
}

/// The answer of a node that may not vote: not granted, the candidate's own vote echoed
/// (openraft expects `response.vote >= request.vote`), no log claimed.
fn refuse_vote(request: &VoteRequest<TypeConfig>) -> VoteResponse<TypeConfig> {
    VoteResponse::new(request.vote, None, false)
}

/// Asks the node at `addr` for its current term (see [`crate::gate`]), on a connection of its
/// own, within `timeout`; `None` if it did not answer.
pub async fn query_term(addr: &str, config: &NetConfig, timeout: Duration) -> Option<u64> {
    let mut client = PeerClient {
        node_id: 0,
        target: 0,
        addr: addr.to_string(),
        config: Arc::new(config.clone()),
        conn: None,
    };
    let frame = encode_frame(&Request::TermQuery, config.frame_bytes_max).ok()?;
    match client.exchange(vec![frame], timeout).await {
        Ok(Response::Term(term)) => Some(term),
        Ok(_) => {
            tracing::warn!(%addr, "a term query was answered with another kind of response");
            None
        }
        Err(_) => None,
    }
}

/// Binds a Raft listener on `addr` (e.g. `127.0.0.1:0`), returning it with its local address.
pub async fn bind(addr: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
