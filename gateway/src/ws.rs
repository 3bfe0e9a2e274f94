//! The WebSocket server: market data streams and private user streams,
//! fed by the outbound consumer; order entry over the same socket.
//!
//! Messages follow the shapes market makers know from Binance:
//!
//! * requests `{"method": "SUBSCRIBE", "params": ["BTC-USDT@depth"], "id": 1}`
//!   (also `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `LOGIN`, `order.place`,
//!   `order.cancel`), answered `{"id": 1, "status": 200, "result": ...}` or
//!   `{"id": 1, "status": 4xx, "error": {"code", "message"}}`;
//! * streams `{"stream": "BTC-USDT@depth", "data": {...}}`: `@depth` (diffs
//!   with `U`, `u` and the previous diff's `pu`), `@trade`, `@bookTicker`,
//!   `@depth20` (the top 20 levels every second), and `user` (after LOGIN:
//!   your orders, fills and balances).
//!
//! Each connection has a bounded queue; a client that falls behind is
//! disconnected with close code 1008 and reason "slow consumer", and never
//! slows the matcher or anyone else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use engine_core::{Event, EventKind, MarketId, Side, UserId};
use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::amounts;
use crate::binance::streams::{Speed, Streams};
use crate::error::ApiError;
use crate::pipeline::Publisher;
use crate::rest::{self, AppState};
use crate::views::Views;

/// Messages queued for one connection before it counts as too slow (the
/// default of `ws_queue_max`).
pub const CONNECTION_QUEUE_MAX_DEFAULT: usize = 4_096;
/// Subscriptions one connection may hold.
pub const SUBSCRIPTIONS_MAX: usize = 50;
/// The largest message a client may send.
pub const CLIENT_MESSAGE_MAX_BYTES: usize = 16 * 1024;
/// Batches of events waiting for the hub before streams are reset.
pub const HUB_QUEUE_MAX: usize = 65_536;
const PING_EVERY: Duration = Duration::from_secs(20);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const BOOK_SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
const BOOK_SNAPSHOT_LEVELS: usize = 20;
/// The period of Binance's fastest depth streams (`@100ms`).
const BINANCE_TICK: Duration = Duration::from_millis(100);

/// What goes out on one connection.
#[derive(Debug)]
enum Outgoing {
    Text(Arc<str>),
    Pong(Vec<u8>),
    Close(u16, &'static str),
}

/// A stream a connection can subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Depth(MarketId),
    Trades(MarketId),
    BookTicker(MarketId),
    Book(MarketId),
    /// Binance's `<symbol>@depth[@100ms]`.
    BinanceDepth(MarketId, Speed),
    /// Binance's `<symbol>@depth<levels>[@100ms]`.
    BinancePartial(MarketId, u8, Speed),
    BinanceTrade(MarketId),
    BinanceAggTrade(MarketId),
    BinanceBookTicker(MarketId),
    /// Binance's `<symbol>@ticker` (false) and `<symbol>@miniTicker` (true).
    BinanceTicker(MarketId, bool),
    /// Binance's `<symbol>@kline_<interval>`, the interval in minutes.
    BinanceKline(MarketId, u16),
}

/// How a connection's stream messages are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The native protocol at `/`: `{"stream": ..., "data": ...}`.
    Native,
    /// Binance's `/ws`: the bare event.
    Raw,
    /// Binance's `/stream`: `{"stream": ..., "data": ...}`.
    Combined,
    /// Binance's WebSocket API at `/ws-api/v3`.
    Api,
}

pub struct Connection {
    queue: mpsc::Sender<Outgoing>,
    pub channels: HashSet<Channel>,
    user: Option<UserId>,
    pub framing: Framing,
    /// The user whose data this connection receives through the Binance
    /// WebSocket API, and the subscription id it was given.
    pub binance_user: Option<(UserId, u64)>,
}

/// Who listens to what; the hub task and the connections share it.
#[derive(Default)]
pub struct Subscribers {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Connection>>,
}

impl Subscribers {
    fn register(&self, queue: mpsc::Sender<Outgoing>, framing: Framing) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(
                id,
                Connection { queue, channels: HashSet::new(), user: None, framing, binance_user: None },
            );
        }
        id
    }

    /// Whether any connection satisfies `test`.
    pub fn any(&self, test: impl Fn(&Connection) -> bool) -> bool {
        self.connections.lock().is_ok_and(|c| c.values().any(test))
    }

    /// Sends each connection the message `message_for` makes for it, if
    /// any; a connection whose queue is full is dropped.
    pub fn send_with(&self, mut message_for: impl FnMut(&Connection) -> Option<Arc<str>>) {
        let Ok(mut connections) = self.connections.lock() else { return };
        connections.retain(|_, connection| match message_for(connection) {
            None => true,
            Some(message) => connection.queue.try_send(Outgoing::Text(message)).is_ok(),
        });
    }

    /// Adds (or removes) `channels` to a connection's subscriptions.
    pub fn change_channels(&self, id: u64, channels: &[Channel], subscribe: bool) -> Result<(), String> {
        let mut connections = self.connections.lock().map_err(|_| "internal error".to_string())?;
        let connection = connections.get_mut(&id).ok_or_else(|| "connection closed".to_string())?;
        for channel in channels {
            if subscribe {
                if connection.channels.len() >= SUBSCRIPTIONS_MAX && !connection.channels.contains(channel) {
                    return Err(format!("at most {SUBSCRIPTIONS_MAX} subscriptions per connection"));
                }
                connection.channels.insert(channel.clone());
            } else {
                connection.channels.remove(channel);
            }
        }
        Ok(())
    }

    pub fn channels_of(&self, id: u64) -> Vec<Channel> {
        self.connections
            .lock()
            .ok()
            .and_then(|c| c.get(&id).map(|conn| conn.channels.iter().cloned().collect()))
            .unwrap_or_default()
    }

    /// Sets the user a connection receives Binance user data events for.
    pub fn set_binance_user(&self, id: u64, user: Option<(UserId, u64)>) {
        if let Ok(mut connections) = self.connections.lock() {
            if let Some(connection) = connections.get_mut(&id) {
                connection.binance_user = user;
            }
        }
    }

    /// Queues one message for one connection (an answer to its request).
    pub fn reply(&self, id: u64, message: Arc<str>) -> bool {
        self.connections
            .lock()
            .ok()
            .and_then(|c| c.get(&id).map(|conn| conn.queue.try_send(Outgoing::Text(message)).is_ok()))
            .unwrap_or(false)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.remove(&id);
        }
    }

    /// Sends `message` to every connection that `wants` it; a connection
    /// whose queue is full is told why and dropped.
    fn send(&self, message: &Arc<str>, wants: impl Fn(&Connection) -> bool) {
        let Ok(mut connections) = self.connections.lock() else { return };
        connections.retain(|_, connection| {
            if !wants(connection) {
                return true;
            }
            match connection.queue.try_send(Outgoing::Text(Arc::clone(message))) {
                Ok(()) => true,
                Err(_) => {
                    // Full or gone: the writer closes with the reason once
                    // it drains what it has; dropping the sender ends it.
                    false
                }
            }
        });
    }

    /// Disconnects everyone (their writers close with "slow consumer").
    pub fn drop_all(&self) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.clear();
        }
    }

    pub fn count(&self) -> usize {
        self.connections.lock().map_or(0, |c| c.len())
    }
}

/// The sender the outbound consumer hands each batch of events to.
pub type HubSender = mpsc::Sender<Arc<[Event]>>;

/// Formats batches of events into stream messages and fans them out.
pub async fn run_hub(
    views: Arc<RwLock<Views>>,
    subscribers: Arc<Subscribers>,
    mut batches: mpsc::Receiver<Arc<[Event]>>,
) {
    let mut previous_u: HashMap<MarketId, u64> = HashMap::new();
    let mut snapshots = tokio::time::interval(BOOK_SNAPSHOT_EVERY);
    let mut binance_ticks = tokio::time::interval(BINANCE_TICK);
    let mut binance = match views.read() {
        Ok(views) => Streams::new(&views),
        Err(_) => return,
    };
    loop {
        tokio::select! {
            batch = batches.recv() => {
                let Some(batch) = batch else { return };
                publish_batch(&views, &subscribers, &batch, &mut previous_u);
                if let Ok(views) = views.read() {
                    binance.on_batch(&views, &subscribers, &batch);
                }
            }
            _ = snapshots.tick() => publish_books(&views, &subscribers),
            _ = binance_ticks.tick() => {
                if let Ok(views) = views.read() {
                    binance.on_tick(&views, &subscribers);
                }
            }
        }
    }
}

fn market_messages_wanted(subscribers: &Subscribers, channel: &Channel) -> bool {
    subscribers.connections.lock().is_ok_and(|c| c.values().any(|conn| conn.channels.contains(channel)))
}

/// A market's changes in one batch: first and last sequence number, and
/// the new total per (is bid, price).
type DepthDiff = (u64, u64, BTreeMap<(bool, u64), u64>);

fn publish_batch(
    views: &RwLock<Views>,
    subscribers: &Subscribers,
    batch: &[Event],
    previous_u: &mut HashMap<MarketId, u64>,
) {
    let Ok(views) = views.read() else { return };
    // Depth: the final quantity of each changed level, per market.
    let mut depth: BTreeMap<MarketId, DepthDiff> = BTreeMap::new();
    let mut trades: Vec<(MarketId, Value)> = Vec::new();
    let mut users: BTreeMap<UserId, Vec<Value>> = BTreeMap::new();
    for event in batch {
        match event.kind {
            EventKind::BookLevel { market, side, price, qty } => {
                let entry = depth.entry(market).or_insert((event.seq, event.seq, BTreeMap::new()));
                entry.1 = event.seq;
                entry.2.insert((side == Side::Buy, price.0), qty.0);
            }
            EventKind::Trade {
                trade,
                market,
                price,
                qty,
                taker_side,
                timestamp_ns,
                maker_user,
                taker_user,
                maker_order,
                taker_order,
                maker_fee,
                taker_fee,
                maker_remaining,
                taker_remaining,
            } => {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                let scale = view.scale;
                trades.push((
                    market,
                    json!({
                        "e": "trade", "s": view.name, "t": trade.0, "E": event.seq,
                        "p": scale.price(price), "q": scale.qty(qty), "T": timestamp_ns / 1_000_000, "T_ns": timestamp_ns,
                        "m": taker_side == Side::Sell,
                    }),
                ));
                let rules = view.market.rules;
                let decimals = |asset: engine_core::AssetId| {
                    views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals)
                };
                for (user, order, remaining, fee, side, maker) in [
                    (maker_user, maker_order, maker_remaining, maker_fee, taker_side.opposite(), true),
                    (taker_user, taker_order, taker_remaining, taker_fee, taker_side, false),
                ] {
                    let fee_asset = if side == Side::Buy { rules.base } else { rules.quote };
                    users.entry(user).or_default().push(json!({
                        "e": "fill", "E": event.seq, "s": view.name, "order_id": order.0, "trade_id": trade.0,
                        "side": side_name(side), "price": scale.price(price), "quantity": scale.qty(qty),
                        "remaining_quantity": scale.qty(remaining), "maker": maker,
                        "fee": amounts::units_to_string(fee, decimals(fee_asset)),
                        "fee_asset": views.assets.get(fee_asset.0 as usize).map(|a| a.symbol.to_string()),
                    }));
                }
            }
            EventKind::OrderAccepted { order, user, market, side, client_order_id, .. } => {
                let name = views.markets.get(market.0 as usize).map(|m| m.name.clone());
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": name, "order_id": order.0, "status": "new",
                    "side": side_name(side), "client_order_id": client_order_id.map(|c| c.to_string()),
                }));
            }
            EventKind::OrderAmended { order, user, market, price, remaining, priority_kept, .. } => {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0, "status": "amended",
                    "price": view.scale.price(price), "remaining_quantity": view.scale.qty(remaining),
                    "priority_kept": priority_kept,
                }));
            }
            EventKind::OrderDone { order, user, market, reason, filled, cancelled } => {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0,
                    "status": format!("{reason:?}").to_lowercase(),
                    "filled_quantity": view.scale.qty(filled), "cancelled_quantity": view.scale.qty(cancelled),
                }));
            }
            EventKind::Balance { user, asset, available, locked } => {
                let Some(a) = views.assets.get(asset.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "balance", "E": event.seq, "asset": a.symbol.as_str(),
                    "available": amounts::units_to_string(available, a.decimals),
                    "locked": amounts::units_to_string(locked, a.decimals),
                }));
            }
            _ => {}
        }
    }

    for (market, (first, last, levels)) in depth {
        let Some(view) = views.markets.get(market.0 as usize) else { continue };
        let pu = previous_u.insert(market, last).unwrap_or(0);
        let side = |bids: bool| -> Vec<Value> {
            levels
                .iter()
                .filter(|((is_bid, _), _)| *is_bid == bids)
                .map(|((_, price), qty)| {
                    json!([
                        view.scale.price(engine_core::Ticks(*price)),
                        view.scale.qty(engine_core::Lots(*qty))
                    ])
                })
                .collect()
        };
        let channel = Channel::Depth(market);
        if market_messages_wanted(subscribers, &channel) {
            let message: Arc<str> = json!({
                "stream": format!("{}@depth", view.name),
                "data": { "e": "depthUpdate", "s": view.name, "U": first, "u": last, "pu": pu, "b": side(true), "a": side(false) },
            })
            .to_string()
            .into();
            subscribers.send(&message, |c| c.channels.contains(&channel));
        }
        let ticker = Channel::BookTicker(market);
        if market_messages_wanted(subscribers, &ticker) {
            let best = |level: Option<(&engine_core::Ticks, &engine_core::Lots)>| {
                level.map(|(p, q)| (view.scale.price(*p), view.scale.qty(*q)))
            };
            let (bid, ask) = (best(view.bids.iter().next_back()), best(view.asks.iter().next()));
            let message: Arc<str> = json!({
                "stream": format!("{}@bookTicker", view.name),
                "data": { "u": last, "s": view.name, "b": bid.as_ref().map(|b| &b.0), "B": bid.as_ref().map(|b| &b.1),
                          "a": ask.as_ref().map(|a| &a.0), "A": ask.as_ref().map(|a| &a.1) },
            })
            .to_string()
            .into();
            subscribers.send(&message, |c| c.channels.contains(&ticker));
        }
    }
    for (market, data) in trades {
        let channel = Channel::Trades(market);
        let Some(view) = views.markets.get(market.0 as usize) else { continue };
        let message: Arc<str> =
            json!({ "stream": format!("{}@trade", view.name), "data": data }).to_string().into();
        subscribers.send(&message, |c| c.channels.contains(&channel));
    }
    for (user, messages) in users {
        for data in messages {
            let message: Arc<str> = json!({ "stream": "user", "data": data }).to_string().into();
            subscribers.send(&message, |c| c.user == Some(user));
        }
    }
}

fn publish_books(views: &RwLock<Views>, subscribers: &Subscribers) {
    let Ok(views) = views.read() else { return };
    for view in &views.markets {
        let channel = Channel::Book(view.market.id);
        if !market_messages_wanted(subscribers, &channel) {
            continue;
        }
        let level = |(p, q): (&engine_core::Ticks, &engine_core::Lots)| {
            json!([view.scale.price(*p), view.scale.qty(*q)])
        };
        let message: Arc<str> = json!({
            "stream": format!("{}@depth{BOOK_SNAPSHOT_LEVELS}", view.name),
            "data": {
                "lastUpdateId": views.last_seq,
                "bids": view.bids.iter().rev().take(BOOK_SNAPSHOT_LEVELS).map(level).collect::<Vec<_>>(),
                "asks": view.asks.iter().take(BOOK_SNAPSHOT_LEVELS).map(level).collect::<Vec<_>>(),
            },
        })
        .to_string()
        .into();
        subscribers.send(&message, |c| c.channels.contains(&channel));
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

/// Accepts WebSocket connections on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    subscribers: Arc<Subscribers>,
    publisher: Publisher,
    queue_max: usize,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        limit_send_buffer(&stream);
        let state = Arc::clone(&state);
        let subscribers = Arc::clone(&subscribers);
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let shared = Shared {
                    state: Arc::clone(&state),
                    subscribers: Arc::clone(&subscribers),
                    publisher: publisher.clone(),
                    queue_max,
                    peer: peer.ip(),
                };
                async move { Ok::<_, std::convert::Infallible>(accept(request, shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// What every connection of the listener shares.
struct Shared {
    state: Arc<AppState>,
    subscribers: Arc<Subscribers>,
    publisher: Publisher,
    queue_max: usize,
    peer: std::net::IpAddr,
}

/// The protocol a path speaks, and the streams its URL subscribes to:
/// `/ws-api/v3` (Binance's WebSocket API), `/ws[/<stream>...]` and
/// `/stream?streams=a/b` (Binance's market streams), anything else the
/// native protocol.
fn protocol_of(state: &AppState, path: &str, query: &str) -> Result<(Framing, Vec<Channel>), ()> {
    if path == "/ws-api/v3" {
        return Ok((Framing::Api, Vec::new()));
    }
    let views = state.views.read().map_err(|_| ())?;
    if path == "/ws" || path.starts_with("/ws/") {
        // Names that are not streams (a client's own index, as some
        // clients put there) are ignored, as Binance does.
        let channels = path
            .trim_start_matches("/ws")
            .split('/')
            .filter_map(|name| crate::binance::streams::parse_stream(&views, name))
            .collect();
        return Ok((Framing::Raw, channels));
    }
    if path == "/stream" {
        let names = rest::param(query, "streams").map_err(|_| ())?.unwrap_or_default();
        let mut channels = Vec::new();
        for name in names.split('/').filter(|n| !n.is_empty()) {
            channels.push(crate::binance::streams::parse_stream(&views, name).ok_or(())?);
        }
        if channels.len() > SUBSCRIPTIONS_MAX {
            return Err(());
        }
        return Ok((Framing::Combined, channels));
    }
    Ok((Framing::Native, Vec::new()))
}

fn accept(mut request: Request<Incoming>, shared: Shared) -> Response<Empty<Bytes>> {
    let status = |code: StatusCode| {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = code;
        response
    };
    if !upgrade::is_upgrade_request(&request) {
        return status(StatusCode::UPGRADE_REQUIRED);
    }
    let Ok((framing, channels)) =
        protocol_of(&shared.state, request.uri().path(), request.uri().query().unwrap_or(""))
    else {
        return status(StatusCode::BAD_REQUEST);
    };
    match upgrade::upgrade(&mut request) {
        Ok((response, socket)) => {
            tokio::spawn(async move {
                if let Ok(mut socket) = socket.await {
                    socket.set_auto_pong(false);
                    socket.set_auto_close(false);
                    socket.set_max_message_size(CLIENT_MESSAGE_MAX_BYTES);
                    run_connection(socket, shared, framing, channels).await;
                }
            });
            response
        }
        Err(_) => status(StatusCode::BAD_REQUEST),
    }
}

async fn run_connection(
    socket: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    shared: Shared,
    framing: Framing,
    channels: Vec<Channel>,
) {
    let Shared { state, subscribers, publisher, queue_max, peer } = shared;
    let (mut reader, mut writer) = socket.split(tokio::io::split);
    let (queue, mut outgoing) = mpsc::channel::<Outgoing>(queue_max.max(1));
    let id = subscribers.register(queue.clone(), framing);
    let _ = subscribers.change_channels(id, &channels, true);
    let writer_task = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let frame = tokio::select! {
                next = outgoing.recv() => match next {
                    Some(Outgoing::Text(text)) => Frame::text(Payload::Owned(text.as_bytes().to_vec())),
                    Some(Outgoing::Pong(data)) => Frame::pong(Payload::Owned(data)),
                    Some(Outgoing::Close(code, reason)) => {
                        let _ = writer.write_frame(Frame::close(code, reason.as_bytes())).await;
                        return;
                    }
                    // The hub dropped this connection: its queue was full.
                    None => {
                        let _ = writer.write_frame(Frame::close(1008, b"slow consumer")).await;
                        return;
                    }
                },
                _ = ping.tick() => Frame::new(true, OpCode::Ping, None, Payload::Owned(Vec::new())),
            };
            if writer.write_frame(frame).await.is_err() {
                return;
            }
        }
    });
    let publisher = Arc::new(Mutex::new(publisher));
    let mut session = Session { user: None, id, subscribers: Arc::clone(&subscribers) };
    let mut api = crate::binance::ws_api::Session::new(id, peer, Arc::clone(&subscribers));
    loop {
        let frame = match tokio::time::timeout(
            IDLE_TIMEOUT,
            reader.read_frame(&mut |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) }),
        )
        .await
        {
            Err(_) => {
                let _ = queue.send(Outgoing::Close(1001, "idle timeout")).await;
                break;
            }
            Ok(Err(WebSocketError::FrameTooLarge)) => {
                let _ = queue.send(Outgoing::Close(1009, "message too large")).await;
                break;
            }
            Ok(Err(_)) => break,
            Ok(Ok(frame)) => frame,
        };
        match frame.opcode {
            OpCode::Close => {
                let _ = queue.send(Outgoing::Close(1000, "bye")).await;
                break;
            }
            OpCode::Ping if queue.try_send(Outgoing::Pong(frame.payload.to_vec())).is_err() => break,
            OpCode::Text | OpCode::Binary => {
                let answer = match framing {
                    Framing::Native => session.handle(&state, &publisher, &frame.payload).await,
                    Framing::Api => api.handle(&state, &publisher, &frame.payload).await,
                    Framing::Raw | Framing::Combined => match state.views.read() {
                        Ok(views) => {
                            crate::binance::streams::handle_request(&views, &subscribers, id, &frame.payload)
                        }
                        Err(_) => json!({ "error": { "code": 0, "msg": "internal error" }, "id": null }),
                    },
                };
                if queue.try_send(Outgoing::Text(answer.to_string().into())).is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    subscribers.remove(id);
    drop(queue);
    let _ = writer_task.await;
}

struct Session {
    user: Option<UserId>,
    id: u64,
    subscribers: Arc<Subscribers>,
}

#[derive(serde::Deserialize)]
struct WsRequest {
    method: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    id: Value,
}

impl Session {
    async fn handle(&mut self, state: &AppState, publisher: &Mutex<Publisher>, payload: &[u8]) -> Value {
        let request: WsRequest = match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(error) => {
                let error = ApiError::bad_request("invalid_json", format!("message: {error}"));
                return json!({ "id": null, "status": 400, "error": { "code": error.code, "message": error.message } });
            }
        };
        let id = request.id.clone();
        match self.dispatch(state, publisher, request).await {
            Ok(result) => json!({ "id": id, "status": 200, "result": result }),
            Err(error) => json!({
                "id": id,
                "status": error.status.as_u16(),
                "error": { "code": error.code, "message": error.message },
            }),
        }
    }

    async fn dispatch(
        &mut self,
        state: &AppState,
        publisher: &Mutex<Publisher>,
        request: WsRequest,
    ) -> Result<Value, ApiError> {
        match request.method.as_str() {
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let names = request
                    .params
                    .as_array()
                    .ok_or_else(|| ApiError::invalid("params", "a list of stream names"))?;
                let mut channels = Vec::new();
                for name in names {
                    let name = name
                        .as_str()
                        .ok_or_else(|| ApiError::invalid("params", "stream names are strings"))?;
                    channels.push(self.channel(state, name)?);
                }
                let subscribe = request.method == "SUBSCRIBE";
                let mut connections = self.subscribers.connections.lock().map_err(|_| internal())?;
                let connection = connections.get_mut(&self.id).ok_or_else(internal)?;
                for channel in channels {
                    if subscribe {
                        if connection.channels.len() >= SUBSCRIPTIONS_MAX
                            && !connection.channels.contains(&channel)
                        {
                            return Err(ApiError::invalid(
                                "params",
                                format!("at most {SUBSCRIPTIONS_MAX} subscriptions per connection"),
                            ));
                        }
                        connection.channels.insert(channel);
                    } else {
                        connection.channels.remove(&channel);
                    }
                }
                Ok(Value::Null)
            }
            "LIST_SUBSCRIPTIONS" => {
                let views = state.views.read().map_err(|_| internal())?;
                let connections = self.subscribers.connections.lock().map_err(|_| internal())?;
                let connection = connections.get(&self.id).ok_or_else(internal)?;
                let mut names: Vec<String> =
                    connection.channels.iter().map(|c| channel_name(&views, c)).collect();
                names.sort();
                Ok(json!(names))
            }
            "LOGIN" => {
                let params = &request.params;
                let text = |name: &'static str| {
                    params[name]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ApiError::invalid(name, "required"))
                };
                let api_key = text("apiKey")?;
                let timestamp = params["timestamp"]
                    .as_u64()
                    .ok_or_else(|| ApiError::invalid("timestamp", "milliseconds, required"))?;
                let signature = text("signature")?;
                // The signed payload is the query string a REST call would have.
                let query = format!("apiKey={api_key}&timestamp={timestamp}&signature={signature}");
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let user = state.auth.authenticate(Some(&api_key), &query, b"", now_ms, true)?;
                self.user = Some(user);
                if let Ok(mut connections) = self.subscribers.connections.lock() {
                    if let Some(connection) = connections.get_mut(&self.id) {
                        connection.user = Some(user);
                    }
                }
                Ok(json!({ "user_id": user.0 }))
            }
            "order.place" => {
                let user = self.user.ok_or_else(not_logged_in)?;
                let body = serde_json::to_vec(&request.params).map_err(|_| internal())?;
                rest::place_order(state, publisher, user, &body).await
            }
            "order.cancel" => {
                let user = self.user.ok_or_else(not_logged_in)?;
                let params = &request.params;
                let query = match (params["order_id"].as_u64(), params["client_order_id"].as_str()) {
                    (Some(id), None) => format!("order_id={id}"),
                    (None, Some(client)) => format!("client_order_id={client}"),
                    _ => {
                        return Err(ApiError::invalid(
                            "order_id",
                            "give exactly one of order_id and client_order_id",
                        ))
                    }
                };
                rest::cancel_order(state, publisher, user, &query).await
            }
            other => Err(ApiError::bad_request("unknown_method", format!("no method {other:?}"))),
        }
    }

    fn channel(&self, state: &AppState, name: &str) -> Result<Channel, ApiError> {
        let views = state.views.read().map_err(|_| internal())?;
        let (market, stream) = name
            .split_once('@')
            .ok_or_else(|| ApiError::invalid("params", format!("{name:?} is not MARKET@stream")))?;
        let market = views
            .market_by_name(market)
            .map(|m| m.market.id)
            .ok_or_else(|| ApiError::not_found("unknown_market", format!("no market {market:?}")))?;
        match stream {
            "depth" => Ok(Channel::Depth(market)),
            "trade" => Ok(Channel::Trades(market)),
            "bookTicker" => Ok(Channel::BookTicker(market)),
            "depth20" => Ok(Channel::Book(market)),
            other => Err(ApiError::invalid(
                "params",
                format!("no stream {other:?}: depth, trade, bookTicker, depth20"),
            )),
        }
    }
}

fn channel_name(views: &Views, channel: &Channel) -> String {
    let (market, stream) = match channel {
        Channel::Depth(m) => (m, "depth"),
        Channel::Trades(m) => (m, "trade"),
        Channel::BookTicker(m) => (m, "bookTicker"),
        Channel::Book(m) => (m, "depth20"),
        // Binance channels live on Binance's paths only.
        binance => return crate::binance::streams::stream_name(views, binance).unwrap_or_default(),
    };
    let name = views.markets.get(market.0 as usize).map_or_else(|| market.to_string(), |m| m.name.clone());
    format!("{name}@{stream}")
}

fn internal() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
}

fn not_logged_in() -> ApiError {
    ApiError::unauthorized("login_required", "send a LOGIN message first")
}

/// The kernel's send buffer per WebSocket connection. Left to autotuning
/// it grows to megabytes per idle client, which hides a slow client for
/// long and costs memory per connection; the queue above it is the buffer.
const SOCKET_SEND_BUFFER_BYTES: i32 = 256 * 1024;

fn limit_send_buffer(stream: &tokio::net::TcpStream) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let size = SOCKET_SEND_BUFFER_BYTES;
        // Safety: a valid socket and a pointer to a live i32 of the stated size.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

/// Binds the WebSocket listener.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_whose_queue_is_full_is_dropped_and_the_others_keep_receiving() {
        let subscribers = Subscribers::default();
        let (slow_queue, _slow_never_reads) = mpsc::channel(2);
        let (fast_queue, mut fast) = mpsc::channel(1_000);
        let slow = subscribers.register(slow_queue, Framing::Native);
        let fast_id = subscribers.register(fast_queue, Framing::Native);
        for connection in subscribers.connections.lock().unwrap().values_mut() {
            connection.channels.insert(Channel::Trades(MarketId(0)));
        }
        let message: Arc<str> = Arc::from("{}");
        for _ in 0..10 {
            subscribers.send(&message, |c| c.channels.contains(&Channel::Trades(MarketId(0))));
        }
        let connections = subscribers.connections.lock().unwrap();
        assert!(!connections.contains_key(&slow), "the slow connection is cut off");
        assert!(connections.contains_key(&fast_id));
        drop(connections);
        let mut received = 0;
        while fast.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, 10, "the fast connection got every message");
    }
}
