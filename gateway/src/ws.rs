//! The WebSocket server: market data streams and private user streams,
//! fed by the outbound consumer; order entry over the same socket.
//!
//! Messages follow the shapes market makers know from Binance:
//!
//! * requests `{"method": "SUBSCRIBE", "params": ["BTC-USDT@depth"], "id": 1}`
//!   (also `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `LOGIN`, `order.place`,
//!   `order.cancel`, `order_list.place`, `order_list.cancel`), answered `{"id": 1, "status": 200, "result": ...}` or
//!   `{"id": 1, "status": 4xx, "error": {"code", "message"}}`;
//! * streams `{"stream": "BTC-USDT@depth", "data": {...}}`: `@depth` (diffs
//!   with `U`, `u` and the previous diff's `pu`), `@trade`, `@bookTicker`,
//!   `@depth20` (the top 20 levels every second), and `user` (after LOGIN:
//!   your orders, fills and balances).
//!
//! Each connection has a bounded queue; a client that falls behind is
//! disconnected with close code 1008 and reason "slow consumer", and never
//! slows the matcher or anyone else. Every frame write has a deadline
//! (`ws_send_timeout_ms`): a client whose socket takes nothing for that
//! long is reset, whatever its kernel buffers hold.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use engine_core::{Contingency, DoneReason, Event, EventKind, MarketId, OrderId, Side, UserId};
use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::amounts;
use crate::binance::streams::Streams;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::metrics::{Metrics, Stage};
use crate::pipeline::Publisher;
use crate::rest;
use crate::state::AppState;
use crate::subscribers::{
    Audience, Channel, EndState, Ending, Framing, Outgoing, SubscribeError, Subscribers, SUBSCRIPTIONS_MAX,
};
use crate::views::Views;

/// The largest message a client may send.
pub const CLIENT_MESSAGE_MAX_BYTES: usize = 16 * 1024;
/// Batches of events waiting for the hub before streams are reset.
pub const HUB_QUEUE_MAX: usize = 65_536;
const PING_EVERY: Duration = Duration::from_secs(20);
/// At most this many queued messages go out in one write, and one write
/// stops taking more past this many bytes, so a burst is flushed in
/// bounded pieces, each within the send timeout.
const FRAMES_PER_WRITE_MAX: usize = 256;
const BYTES_PER_WRITE_MAX: usize = 256 * 1024;
/// The per-connection write buffer that gathers a batch of frames.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const BOOK_SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
const BOOK_SNAPSHOT_LEVELS: usize = 20;
/// The period of Binance's fastest depth streams (`@100ms`).
const BINANCE_TICK: Duration = Duration::from_millis(100);

/// The sender the outbound consumer hands each batch of events to.
pub type HubSender = mpsc::Sender<Arc<[Event]>>;

/// Formats batches of events into stream messages and fans them out. Call
/// it before the pipeline publishes its first batch: it takes each market's
/// last book change from the (recovered) views here, so that depth diffs
/// go on from there (`pu` and `U` continue across a restart).
pub fn run_hub(
    views: Arc<RwLock<Views>>,
    subscribers: Arc<Subscribers>,
    batches: mpsc::Receiver<Arc<[Event]>>,
) -> impl std::future::Future<Output = ()> {
    let start = views.read().ok().map(|views| {
        let previous_u: HashMap<MarketId, u64> =
            views.markets.iter().map(|view| (view.market.id, view.depth_seq)).collect();
        (previous_u, Streams::new(&views))
    });
    hub(views, subscribers, batches, start)
}

async fn hub(
    views: Arc<RwLock<Views>>,
    subscribers: Arc<Subscribers>,
    mut batches: mpsc::Receiver<Arc<[Event]>>,
    start: Option<(HashMap<MarketId, u64>, Streams)>,
) {
    let Some((mut previous_u, mut binance)) = start else { return };
    let mut snapshots = tokio::time::interval(BOOK_SNAPSHOT_EVERY);
    let mut binance_ticks = tokio::time::interval(BINANCE_TICK);
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
    subscribers.any(|connection| connection.channels.contains(channel))
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
    // Messages nobody receives are not built: with no stream subscribers
    // formatting them cost the order path more than the matcher did.
    let mut wanted = Wanted::new(subscribers);
    // An OTO's pending order: its list's event comes just before its own
    // `OrderAccepted`, in the same command.
    let mut pending: Option<OrderId> = None;
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
                if wanted.channel(&Channel::Trades(market)) {
                    trades.push((
                        market,
                        json!({
                            "e": "trade", "s": view.name, "t": trade.0, "E": event.seq,
                            "p": scale.price(price), "q": scale.qty(qty), "T": timestamp_ns / 1_000_000, "T_ns": timestamp_ns,
                            "m": taker_side == Side::Sell,
                        }),
                    ));
                }
                let rules = view.market.rules;
                let decimals = |asset: engine_core::AssetId| {
                    views.assets.get(asset.0 as usize).map_or(0, |a| a.decimals)
                };
                for (user, order, remaining, fee, side, maker) in [
                    (maker_user, maker_order, maker_remaining, maker_fee, taker_side.opposite(), true),
                    (taker_user, taker_order, taker_remaining, taker_fee, taker_side, false),
                ] {
                    if !wanted.user(user) {
                        continue;
                    }
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
            EventKind::OrderAccepted { order, user, market, side, client_order_id, .. }
                if wanted.user(user) =>
            {
                let name = views.markets.get(market.0 as usize).map(|m| m.name.clone());
                let status = if pending == Some(order) { "pending_new" } else { "new" };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": name, "order_id": order.0, "status": status,
                    "side": side_name(side), "client_order_id": client_order_id.map(|c| c.to_string()),
                }));
            }
            EventKind::OrderListAccepted {
                list, user, market, contingency, orders, client_list_id, ..
            } => {
                pending = (contingency == Contingency::Oto).then_some(orders[1]);
                if wanted.user(user) {
                    let name = views.markets.get(market.0 as usize).map(|m| m.name.clone());
                    users.entry(user).or_default().push(json!({
                        "e": "list", "E": event.seq, "s": name, "list_id": list.0, "status": "open",
                        "contingency": match contingency { Contingency::Oco => "oco", Contingency::Oto => "oto" },
                        "list_client_id": client_list_id.map(|c| c.to_string()),
                        "order_ids": [orders[0].0, orders[1].0],
                    }));
                }
            }
            EventKind::OrderListDone { list, user, market } if wanted.user(user) => {
                let name = views.markets.get(market.0 as usize).map(|m| m.name.clone());
                users.entry(user).or_default().push(json!({
                    "e": "list", "E": event.seq, "s": name, "list_id": list.0, "status": "done",
                }));
            }
            EventKind::OrderTriggered { order, user, market, price, .. } if wanted.user(user) => {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0, "status": "triggered",
                    "trigger_price": view.scale.price(price),
                }));
            }
            EventKind::TrailingStarted { order, user, market, price } if wanted.user(user) => {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0, "status": "trailing",
                    "trailing_from_price": view.scale.price(price),
                }));
            }
            EventKind::OrderReleased { order, user, market, .. } if wanted.user(user) => {
                let name = views.markets.get(market.0 as usize).map(|m| m.name.clone());
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": name, "order_id": order.0, "status": "released",
                }));
            }
            EventKind::OrderRefilled { order, user, market, price, shown, hidden, .. }
                if wanted.user(user) =>
            {
                // Private: only the owner ever learns the hidden size.
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0, "status": "refilled",
                    "price": view.scale.price(price), "visible_quantity": view.scale.qty(shown),
                    "hidden_quantity": view.scale.qty(hidden),
                }));
            }
            EventKind::OrderAmended { order, user, market, price, remaining, priority_kept, .. }
                if wanted.user(user) =>
            {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0, "status": "amended",
                    "price": view.scale.price(price), "remaining_quantity": view.scale.qty(remaining),
                    "priority_kept": priority_kept,
                }));
            }
            EventKind::OrderDone { order, user, market, reason, filled, cancelled } if wanted.user(user) => {
                let Some(view) = views.markets.get(market.0 as usize) else { continue };
                let reject_reason = match reason {
                    DoneReason::Refused(why) => Some(crate::app::describe(&views, why)),
                    _ => None,
                };
                users.entry(user).or_default().push(json!({
                    "e": "order", "E": event.seq, "s": view.name, "order_id": order.0,
                    // The REST API's and the database's names.
                    "status": persistence::done_status(reason),
                    "filled_quantity": view.scale.qty(filled), "cancelled_quantity": view.scale.qty(cancelled),
                    "reject_reason": reject_reason,
                }));
            }
            EventKind::Balance { user, asset, available, locked } if wanted.user(user) => {
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

/// Which channels and users have a subscriber: read from the connections
/// once per batch, when first asked.
struct Wanted<'a> {
    subscribers: &'a Subscribers,
    audience: Option<Audience>,
}

impl<'a> Wanted<'a> {
    fn new(subscribers: &'a Subscribers) -> Wanted<'a> {
        Wanted { subscribers, audience: None }
    }

    fn audience(&mut self) -> &Audience {
        self.audience.get_or_insert_with(|| self.subscribers.audience())
    }

    fn channel(&mut self, channel: &Channel) -> bool {
        self.audience().channels.contains(channel)
    }

    fn user(&mut self, user: UserId) -> bool {
        self.audience().users.contains(&user)
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

/// What bounds each WebSocket connection (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Messages queued for one connection; one more closes it as a slow
    /// consumer (`ws_queue_max`).
    pub queue_max: usize,
    /// How long one frame may take to be written before the connection is
    /// reset (`ws_send_timeout_ms`).
    pub send_timeout: Duration,
}

/// Accepts WebSocket connections on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    subscribers: Arc<Subscribers>,
    publisher: Publisher,
    limits: ConnectionLimits,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        limit_send_buffer(stream.as_raw_fd());
        let socket = stream.as_raw_fd();
        let state = Arc::clone(&state);
        let subscribers = Arc::clone(&subscribers);
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let shared = Shared {
                    state: Arc::clone(&state),
                    subscribers: Arc::clone(&subscribers),
                    publisher: publisher.clone(),
                    limits,
                    peer: peer.ip(),
                    socket,
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

/// What every connection of the listener shares, and its TCP socket.
struct Shared {
    state: Arc<AppState>,
    subscribers: Arc<Subscribers>,
    publisher: Publisher,
    limits: ConnectionLimits,
    peer: std::net::IpAddr,
    /// The connection's socket, to reset it: valid while the upgraded
    /// connection (which owns it) lives.
    socket: RawFd,
}

/// What a connection's URL asks for.
struct Opening {
    framing: Framing,
    /// The streams its URL subscribes to.
    channels: Vec<Channel>,
    /// A listen key in the URL (`/ws/<listenKey>`), and its user.
    listen_key: Option<(UserId, Arc<str>)>,
}

/// The protocol a path speaks, and the streams its URL subscribes to:
/// `/ws-api/v3` (Binance's WebSocket API), `/ws[/<stream or listen
/// key>...]` and `/stream?streams=a/b` (Binance's market and user data
/// streams), anything else the native protocol. A name shaped like a
/// listen key that is not a live one is refused (the client must open a
/// new key), not ignored.
fn protocol_of(state: &AppState, path: &str, query: &str) -> Result<Opening, ()> {
    let native = |framing| Opening { framing, channels: Vec::new(), listen_key: None };
    if path == "/ws-api/v3" {
        return Ok(native(Framing::Api));
    }
    let views = state.views.read().map_err(|_| ())?;
    let now = now_ms();
    let mut listen_key = None;
    let mut listen_key_of = |name: &str| -> Result<bool, ()> {
        if !crate::binance::state::looks_like_listen_key(name) {
            return Ok(false);
        }
        let user = state.binance.listen_key_user(name, now).ok_or(())?;
        listen_key = Some((user, Arc::from(name)));
        Ok(true)
    };
    if path == "/ws" || path.starts_with("/ws/") {
        // Names that are neither streams nor listen keys (a client's own
        // index, as some clients put there) are ignored, as Binance does.
        let mut channels = Vec::new();
        for name in path.trim_start_matches("/ws").split('/') {
            match crate::binance::streams::parse_stream(&views, name) {
                Some(channel) => channels.push(channel),
                None => {
                    listen_key_of(name)?;
                }
            }
        }
        return Ok(Opening { framing: Framing::Raw, channels, listen_key });
    }
    if path == "/stream" {
        let names = crate::query::param(query, "streams").map_err(|_| ())?.unwrap_or_default();
        let mut channels = Vec::new();
        for name in names.split('/').filter(|n| !n.is_empty()) {
            match crate::binance::streams::parse_stream(&views, name) {
                Some(channel) => channels.push(channel),
                None if listen_key_of(name)? => {}
                None => return Err(()),
            }
        }
        if channels.len() > SUBSCRIPTIONS_MAX {
            return Err(());
        }
        return Ok(Opening { framing: Framing::Combined, channels, listen_key });
    }
    Ok(native(Framing::Native))
}

/// Takes over a connection of the REST port whose request is a WebSocket
/// handshake: the same protocols, paths and limits as the WebSocket port.
pub fn upgrade(
    request: Request<Incoming>,
    state: Arc<AppState>,
    publisher: Publisher,
    peer: std::net::IpAddr,
    socket: RawFd,
) -> Response<Empty<Bytes>> {
    limit_send_buffer(socket);
    let limits = ConnectionLimits { queue_max: state.ws_queue_max, send_timeout: state.ws_send_timeout };
    let subscribers = Arc::clone(&state.subscribers);
    accept(request, Shared { state, subscribers, publisher, limits, peer, socket })
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
    let Ok(opening) = protocol_of(&shared.state, request.uri().path(), request.uri().query().unwrap_or(""))
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
                    run_connection(socket, shared, opening).await;
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
    opening: Opening,
) {
    let Opening { framing, channels, listen_key } = opening;
    let Shared { state, subscribers, publisher, limits, peer, socket: socket_fd } = shared;
    let _counted = OpenConnection::count(&state.health.ws_connections);
    state.health.metrics.ws_opened.fetch_add(1, Ordering::Relaxed);
    let (mut reader, mut writer) = socket.split(|socket| {
        let (read, write) = tokio::io::split(socket);
        (read, tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, write))
    });
    let (queue, mut outgoing) = mpsc::channel::<Outgoing>(limits.queue_max.max(1));
    let (ending, mut end_state) = Ending::new();
    let id = subscribers.register(queue.clone(), ending.clone(), framing);
    let _ = subscribers.change_channels(id, &channels, true);
    if let Some((user, key)) = listen_key {
        subscribers.set_listen_key(id, user, key);
    }
    let writer_state = Arc::clone(&state);
    let mut writer_task = tokio::spawn(async move {
        let metrics = &writer_state.health.metrics;
        write_frames(&mut writer, &mut outgoing, &mut end_state, limits.send_timeout, metrics).await
    });
    let publisher = Arc::new(Mutex::new(publisher));
    let mut session = Session { user: None, id, subscribers: Arc::clone(&subscribers) };
    let mut api = crate::binance::ws_api::Session::new(id, peer, Arc::clone(&subscribers));
    // Reads until the client is done or the writer has ended the
    // connection (which it does within bounded time once a close is asked).
    let mut writer_end = None;
    // Pongs and closes are the writer's: nothing is sent from here.
    let mut send_nothing = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, reader.read_frame(&mut send_nothing));
        let frame = tokio::select! {
            end = &mut writer_task => {
                writer_end = Some(end.unwrap_or(WriterEnd::Failed));
                break;
            }
            read = read => match read {
                // Read on: the client's close frame should answer ours (a
                // frame the timeout cut may read as garbage: nothing is
                // served while closing, and the writer bounds the wait).
                Err(_) => {
                    ending.close(1001, "idle timeout");
                    continue;
                }
                Ok(Err(WebSocketError::FrameTooLarge)) => {
                    ending.close(1009, "message too large");
                    break;
                }
                Ok(Err(_)) => break,
                Ok(Ok(frame)) => frame,
            },
        };
        match frame.opcode {
            OpCode::Close => {
                ending.close(1000, "bye");
                break;
            }
            // Closing: nothing more is served (its answer could not be sent).
            _ if ending.state().close.is_some() => {}
            OpCode::Ping if queue.try_send(Outgoing::Pong(frame.payload.to_vec())).is_err() => {
                ending.close(1008, "slow consumer");
            }
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
                    ending.close(1008, "slow consumer");
                }
            }
            _ => {}
        }
    }
    ending.reader_done();
    subscribers.remove(id);
    drop(queue);
    let end = match writer_end {
        Some(end) => end,
        None => writer_task.await.unwrap_or(WriterEnd::Failed),
    };
    let slow = end == WriterEnd::SendTimedOut || matches!(ending.state().close, Some((1008, _)));
    if slow {
        state.health.metrics.ws_slow_consumers.fetch_add(1, Ordering::Relaxed);
    }
    match (end, ending.state().close) {
        (WriterEnd::SendTimedOut, _) => tracing::info!(
            "websocket {peer} (connection {id}): a frame could not be written within {} ms \
             (ws_send_timeout_ms); connection reset",
            limits.send_timeout.as_millis()
        ),
        (_, Some((1008, _))) => tracing::info!(
            "websocket {peer} (connection {id}): closed as a slow consumer (its queue of \
             ws_queue_max = {} messages overflowed, or the stream hub fell behind)",
            limits.queue_max
        ),
        _ => {}
    }
    if end != WriterEnd::Closed {
        // Whatever the kernel still holds for this client is dropped with
        // it, rather than kept (for minutes) behind a FIN it will not read.
        reset_on_close(socket_fd);
    }
    // The last owner of the socket: dropping it closes (or resets) it.
    drop(reader);
}

/// How a connection's writer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterEnd {
    /// The closing handshake completed: the TCP connection closes normally.
    Closed,
    /// A frame was not written within the send timeout.
    SendTimedOut,
    /// The close frame, or the client's answer to it, did not come within
    /// the send timeout.
    CloseTimedOut,
    /// Writing failed, or the connection ended without a close to send.
    Failed,
}

/// Writes a connection's queue, its pings and then its close frame, each
/// write within a deadline. Returns once the connection is to be dropped.
async fn write_frames<S: AsyncWrite + Unpin>(
    writer: &mut WebSocketWrite<S>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    end_state: &mut watch::Receiver<EndState>,
    send_timeout: Duration,
    metrics: &Metrics,
) -> WriterEnd {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // What one wake-up writes: the first message and whatever else is
    // already queued, up to a bound, flushed together (one system call for
    // a burst instead of one per message).
    let mut batch: Vec<Outgoing> = Vec::with_capacity(FRAMES_PER_WRITE_MAX);
    loop {
        let first = tokio::select! {
            // A close goes before whatever is still queued.
            biased;
            changed = end_state.changed() => {
                let state = *end_state.borrow_and_update();
                if changed.is_err() || state.close.is_some() || state.reader_done {
                    break;
                }
                continue;
            }
            next = outgoing.recv() => match next {
                Some(message) => Some(message),
                None => break,
            },
            _ = ping.tick() => None,
        };
        batch.clear();
        batch.extend(first);
        let mut bytes: usize = batch.iter().map(Outgoing::payload_bytes).sum();
        while batch.len() < FRAMES_PER_WRITE_MAX && bytes < BYTES_PER_WRITE_MAX {
            let Ok(message) = outgoing.try_recv() else { break };
            bytes += message.payload_bytes();
            batch.push(message);
        }
        let started = std::time::Instant::now();
        match tokio::time::timeout(send_timeout, write_batch(writer, &batch)).await {
            Ok(Ok(())) => metrics.record(Stage::WsSend, started.elapsed()),
            Ok(Err(_)) => return WriterEnd::Failed,
            Err(_) => return WriterEnd::SendTimedOut,
        }
    }
    let Some((code, reason)) = end_state.borrow().close else { return WriterEnd::Failed };
    // The closing handshake (our close frame out, the client's back) gets
    // the send timeout too; a client that does not complete it is reset,
    // so a connection never outlives two send timeouts once it must close.
    let deadline = tokio::time::Instant::now() + send_timeout;
    match tokio::time::timeout_at(deadline, write_frame(writer, Frame::close(code, reason.as_bytes()))).await
    {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return WriterEnd::Failed,
        Err(_) => return WriterEnd::CloseTimedOut,
    }
    match tokio::time::timeout_at(deadline, end_state.wait_for(|state| state.reader_done)).await {
        Ok(Ok(_)) => WriterEnd::Closed,
        Ok(Err(_)) => WriterEnd::Failed,
        Err(_) => WriterEnd::CloseTimedOut,
    }
}

/// Writes a batch of queued messages (a ping when empty) without copying
/// them, then flushes once.
async fn write_batch<S: AsyncWrite + Unpin>(
    writer: &mut WebSocketWrite<S>,
    batch: &[Outgoing],
) -> Result<(), WebSocketError> {
    if batch.is_empty() {
        writer.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await?;
    }
    for message in batch {
        let frame = match message {
            Outgoing::Text(text) => Frame::text(Payload::Borrowed(text.as_bytes())),
            Outgoing::Pong(data) => Frame::pong(Payload::Borrowed(data)),
        };
        writer.write_frame(frame).await?;
    }
    writer.flush().await
}

/// Writes one frame and flushes it.
async fn write_frame<S: AsyncWrite + Unpin>(
    writer: &mut WebSocketWrite<S>,
    frame: Frame<'_>,
) -> Result<(), WebSocketError> {
    writer.write_frame(frame).await?;
    writer.flush().await
}

/// Counts an open WebSocket connection (`ws_connections` in `/health`)
/// for as long as it lives.
struct OpenConnection<'a>(&'a AtomicU64);

impl OpenConnection<'_> {
    fn count(open: &AtomicU64) -> OpenConnection<'_> {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
                self.subscribers.change_channels(self.id, &channels, subscribe).map_err(
                    |error| match error {
                        SubscribeError::TooMany => ApiError::invalid("params", error),
                        SubscribeError::Closed | SubscribeError::Unavailable => internal(),
                    },
                )?;
                Ok(Value::Null)
            }
            "LIST_SUBSCRIPTIONS" => {
                let views = state.views.read().map_err(|_| internal())?;
                let channels = self.subscribers.channels_of(self.id).ok_or_else(internal)?;
                let mut names: Vec<String> = channels.iter().map(|c| channel_name(&views, c)).collect();
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
                // A login starts a session; it executes no command itself.
                let user = state.auth.authenticate(Some(&api_key), &query, b"", now_ms(), true)?.user;
                self.user = Some(user);
                self.subscribers.set_user(self.id, user);
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
            "order_list.place" => {
                let user = self.user.ok_or_else(not_logged_in)?;
                let body = serde_json::to_vec(&request.params).map_err(|_| internal())?;
                rest::place_order_list(state, publisher, user, &body).await
            }
            "order_list.cancel" => {
                let user = self.user.ok_or_else(not_logged_in)?;
                let params = &request.params;
                let query = match (params["list_id"].as_u64(), params["list_client_id"].as_str()) {
                    (Some(id), None) => format!("list_id={id}"),
                    (None, Some(client)) => format!("list_client_id={client}"),
                    _ => {
                        return Err(ApiError::invalid(
                            "list_id",
                            "give exactly one of list_id and list_client_id",
                        ))
                    }
                };
                rest::cancel_order_list(state, publisher, user, &query).await
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

fn limit_send_buffer(socket: RawFd) {
    #[cfg(unix)]
    {
        let size = SOCKET_SEND_BUFFER_BYTES;
        // Safety: a valid socket and a pointer to a live i32 of the stated size.
        unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

/// Makes closing `socket` reset the connection (SO_LINGER of zero): the
/// data the kernel still holds for the client is discarded at once.
fn reset_on_close(socket: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // Safety: `socket` is open (the caller still owns the connection) and
    // the pointer is to a live linger of the stated size.
    unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Binds the WebSocket listener.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPE_BYTES: usize = 64;

    /// A socket that takes nothing: the far end of a tiny in-memory pipe
    /// that is never read.
    fn stalled_writer() -> (WebSocketWrite<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(PIPE_BYTES);
        let (_, writer) =
            fastwebsockets::after_handshake_split(tokio::io::empty(), near, fastwebsockets::Role::Server);
        (writer, far)
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_cannot_be_written_in_time_ends_the_writer() {
        let (mut writer, _never_read) = stalled_writer();
        let (queue, mut outgoing) = mpsc::channel(16);
        let (_ending, mut end_state) = Ending::new();
        queue.try_send(Outgoing::Text(Arc::from("x".repeat(1_000)))).unwrap();
        let timeout = Duration::from_millis(500);
        let started = tokio::time::Instant::now();
        let end =
            write_frames(&mut writer, &mut outgoing, &mut end_state, timeout, &Metrics::default()).await;
        assert_eq!(end, WriterEnd::SendTimedOut);
        assert_eq!(started.elapsed(), timeout, "given up at the deadline, not later");
    }

    /// A socket that records each write it is given.
    #[derive(Default, Clone)]
    struct RecordingSocket {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncWrite for RecordingSocket {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.lock().unwrap().push(data.to_vec());
            std::task::Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_messages_go_out_together_in_order() {
        let socket = RecordingSocket::default();
        let (_, mut writer) = fastwebsockets::after_handshake_split(
            tokio::io::empty(),
            tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, socket.clone()),
            fastwebsockets::Role::Server,
        );
        let (queue, mut outgoing) = mpsc::channel(1_000);
        let (_ending, mut end_state) = Ending::new();
        for n in 0..100 {
            queue.try_send(Outgoing::Text(Arc::from(format!("{{\"n\":{n}}}")))).unwrap();
        }
        drop(queue);
        write_frames(&mut writer, &mut outgoing, &mut end_state, Duration::from_secs(5), &Metrics::default())
            .await;
        let writes = socket.writes.lock().unwrap();
        assert_eq!(writes.len(), 1, "one write for the burst, not one per message");
        let mut bytes = &writes[0][..];
        for n in 0..100 {
            let text = format!("{{\"n\":{n}}}");
            assert_eq!(bytes[0], 0x81, "a final text frame");
            assert_eq!(bytes[1] as usize, text.len());
            assert_eq!(&bytes[2..2 + text.len()], text.as_bytes());
            bytes = &bytes[2 + text.len()..];
        }
        assert!(bytes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_that_cannot_be_written_is_given_up_after_the_send_timeout() {
        let (mut writer, _never_read) = stalled_writer();
        let (_queue, mut outgoing) = mpsc::channel::<Outgoing>(16);
        let (ending, mut end_state) = Ending::new();
        // The pipe is full (a frame of 2 bytes of head and the rest of
        // payload) before the close is asked for.
        let filling = vec![b'x'; PIPE_BYTES - 2];
        write_frame(&mut writer, Frame::text(Payload::Owned(filling))).await.unwrap();
        ending.close(1008, "slow consumer");
        let started = tokio::time::Instant::now();
        let timeout = Duration::from_secs(3);
        let end =
            write_frames(&mut writer, &mut outgoing, &mut end_state, timeout, &Metrics::default()).await;
        assert_eq!(end, WriterEnd::CloseTimedOut);
        assert_eq!(started.elapsed(), timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_the_client_answers_ends_cleanly() {
        let (near, mut far) = tokio::io::duplex(1_024);
        let (_, mut writer) =
            fastwebsockets::after_handshake_split(tokio::io::empty(), near, fastwebsockets::Role::Server);
        let (queue, mut outgoing) = mpsc::channel(16);
        let (ending, mut end_state) = Ending::new();
        queue.try_send(Outgoing::Text(Arc::from("not sent: the close goes first"))).unwrap();
        ending.close(1001, "idle timeout");
        let client = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ending.reader_done();
        });
        let end = write_frames(
            &mut writer,
            &mut outgoing,
            &mut end_state,
            Duration::from_secs(5),
            &Metrics::default(),
        )
        .await;
        assert_eq!(end, WriterEnd::Closed);
        client.await.unwrap();
        drop(writer);
        let mut written = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut far, &mut written).await.unwrap();
        // FIN + close opcode, 2 bytes of code and the reason.
        assert_eq!(written[..4], [0x88, 2 + 12, 0x03, 0xe9]);
        assert_eq!(&written[4..], b"idle timeout");
    }
}
