//! Who listens to what: the WebSocket connections, the streams each one
//! subscribed to, and sending to them without ever waiting. The hub and
//! the Binance stream encodings send through it; the connection server
//! registers connections in it; it knows none of them.
//!
//! Each connection has a bounded queue: a message for a connection whose
//! queue is full closes it as a slow consumer at once (its writer sends
//! the close frame as soon as its socket takes one, or resets it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine_core::{MarketId, UserId};
use tokio::sync::{mpsc, watch};

/// Subscriptions one connection may hold.
pub const SUBSCRIPTIONS_MAX: usize = 50;

/// How often a stream is pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Speed {
    Ms100,
    Ms1000,
}

/// What goes out on one connection. Its close goes another way
/// ([`Ending`]): it must get through when the queue is full.
#[derive(Debug)]
pub enum Outgoing {
    Text(Arc<str>),
    Pong(Vec<u8>),
}

impl Outgoing {
    /// The payload's length in bytes.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Outgoing::Text(text) => text.len(),
            Outgoing::Pong(data) => data.len(),
        }
    }
}

/// How far one connection is from its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndState {
    /// The close frame to send, (code, reason): the first asked for wins.
    pub close: Option<(u16, &'static str)>,
    /// Nothing more will be read: the client's close frame came, or
    /// reading failed or stopped.
    pub reader_done: bool,
}

/// Asks one connection to end; the hub (slow consumer), the reader (idle,
/// the client's close) and the writer share it. Asking never waits: a full
/// queue or a full socket must not hold up a close.
#[derive(Clone)]
pub struct Ending(watch::Sender<EndState>);

impl Ending {
    pub fn new() -> (Ending, watch::Receiver<EndState>) {
        let (sender, receiver) = watch::channel(EndState::default());
        (Ending(sender), receiver)
    }

    /// Asks for a close frame with `code` and `reason`, unless another
    /// close was asked for first.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.0.send_if_modified(|state| {
            let first = state.close.is_none();
            if first {
                state.close = Some((code, reason));
            }
            first
        });
    }

    /// Says that nothing more will be read from the client.
    pub fn reader_done(&self) {
        self.0.send_if_modified(|state| !std::mem::replace(&mut state.reader_done, true));
    }

    pub fn state(&self) -> EndState {
        *self.0.borrow()
    }
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
    ending: Ending,
    pub channels: HashSet<Channel>,
    /// The user whose native `user` stream this connection receives
    /// (after its LOGIN).
    pub user: Option<UserId>,
    pub framing: Framing,
    /// The user whose data this connection receives through the Binance
    /// WebSocket API, and the subscription id it was given.
    pub binance_user: Option<(UserId, u64)>,
    /// The listen key this connection was opened with (`/ws/<listenKey>`),
    /// whose user's events it receives as bare Binance events.
    pub listen_key: Option<Arc<str>>,
}

/// Why a connection's subscriptions did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// It holds [`SUBSCRIPTIONS_MAX`] already.
    TooMany,
    /// It is gone (closed while the request was read).
    Closed,
    /// The table is unavailable (a thread panicked holding it).
    Unavailable,
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::TooMany => write!(f, "at most {SUBSCRIPTIONS_MAX} subscriptions per connection"),
            SubscribeError::Closed => f.write_str("connection closed"),
            SubscribeError::Unavailable => f.write_str("internal error"),
        }
    }
}

/// Who listens at one moment ([`Subscribers::audience`]).
#[derive(Debug, Default)]
pub struct Audience {
    pub channels: HashSet<Channel>,
    pub users: HashSet<UserId>,
}

/// Who listens to what; the hub task and the connections share it.
#[derive(Default)]
pub struct Subscribers {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Connection>>,
}

impl Subscribers {
    pub fn register(&self, queue: mpsc::Sender<Outgoing>, ending: Ending, framing: Framing) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(
                id,
                Connection {
                    queue,
                    ending,
                    channels: HashSet::new(),
                    user: None,
                    framing,
                    binance_user: None,
                    listen_key: None,
                },
            );
        }
        id
    }

    /// Whether any connection satisfies `test`.
    /// Every channel with a subscriber and every user whose native stream
    /// a connection follows, in one pass over the connections.
    pub fn audience(&self) -> Audience {
        let mut audience = Audience::default();
        if let Ok(connections) = self.connections.lock() {
            for connection in connections.values() {
                audience.channels.extend(connection.channels.iter().cloned());
                audience.users.extend(connection.user);
            }
        }
        audience
    }

    pub fn any(&self, test: impl Fn(&Connection) -> bool) -> bool {
        self.connections.lock().is_ok_and(|c| c.values().any(test))
    }

    /// Sends each connection the message `message_for` makes for it, if
    /// any; a connection whose queue is full is closed and dropped.
    pub fn send_with(&self, mut message_for: impl FnMut(&Connection) -> Option<Arc<str>>) {
        let Ok(mut connections) = self.connections.lock() else { return };
        connections.retain(|_, connection| match message_for(connection) {
            None => true,
            Some(message) => connection.offer(message),
        });
    }

    /// Adds (or removes) `channels` to a connection's subscriptions.
    pub fn change_channels(
        &self,
        id: u64,
        channels: &[Channel],
        subscribe: bool,
    ) -> Result<(), SubscribeError> {
        let mut connections = self.connections.lock().map_err(|_| SubscribeError::Unavailable)?;
        let connection = connections.get_mut(&id).ok_or(SubscribeError::Closed)?;
        for channel in channels {
            if subscribe {
                if connection.channels.len() >= SUBSCRIPTIONS_MAX && !connection.channels.contains(channel) {
                    return Err(SubscribeError::TooMany);
                }
                connection.channels.insert(channel.clone());
            } else {
                connection.channels.remove(channel);
            }
        }
        Ok(())
    }

    /// A connection's subscriptions; `None` once it is gone.
    pub fn channels_of(&self, id: u64) -> Option<Vec<Channel>> {
        self.connections
            .lock()
            .ok()
            .and_then(|c| c.get(&id).map(|conn| conn.channels.iter().cloned().collect()))
    }

    /// Sets the user whose native `user` stream a connection receives.
    pub fn set_user(&self, id: u64, user: UserId) {
        if let Ok(mut connections) = self.connections.lock() {
            if let Some(connection) = connections.get_mut(&id) {
                connection.user = Some(user);
            }
        }
    }

    /// Sets the user a connection receives Binance user data events for.
    pub fn set_binance_user(&self, id: u64, user: Option<(UserId, u64)>) {
        if let Ok(mut connections) = self.connections.lock() {
            if let Some(connection) = connections.get_mut(&id) {
                connection.binance_user = user;
            }
        }
    }

    /// Makes a connection receive `user`'s Binance user data events, as
    /// the stream of listen key `key`.
    pub fn set_listen_key(&self, id: u64, user: UserId, key: Arc<str>) {
        if let Ok(mut connections) = self.connections.lock() {
            if let Some(connection) = connections.get_mut(&id) {
                connection.binance_user = Some((user, 0));
                connection.listen_key = Some(key);
            }
        }
    }

    /// Ends the user data stream of listen key `key` on every connection
    /// opened with it: each is sent `last` (if any) and receives no more
    /// user events; with `close`, the connection is closed too.
    pub fn end_listen_key(&self, key: &str, last: Option<Arc<str>>, close: Option<(u16, &'static str)>) {
        let Ok(mut connections) = self.connections.lock() else { return };
        for connection in connections.values_mut() {
            if connection.listen_key.as_deref() != Some(key) {
                continue;
            }
            if let Some(message) = &last {
                connection.offer(Arc::clone(message));
            }
            connection.binance_user = None;
            connection.listen_key = None;
            if let Some((code, reason)) = close {
                connection.ending.close(code, reason);
            }
        }
    }

    /// Queues one message for one connection (an answer to its request).
    pub fn reply(&self, id: u64, message: Arc<str>) -> bool {
        self.connections.lock().ok().and_then(|c| c.get(&id).map(|conn| conn.offer(message))).unwrap_or(false)
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.remove(&id);
        }
    }

    /// Sends `message` to every connection that `wants` it; a connection
    /// whose queue is full is told why and dropped.
    pub fn send(&self, message: &Arc<str>, wants: impl Fn(&Connection) -> bool) {
        let Ok(mut connections) = self.connections.lock() else { return };
        connections.retain(|_, connection| !wants(connection) || connection.offer(Arc::clone(message)));
    }

    /// Disconnects everyone with "slow consumer": the hub itself fell
    /// behind, and every stream must start again.
    pub fn drop_all(&self) {
        self.close_all(1008, "slow consumer");
    }

    /// Closes every connection with `code` and `reason` and forgets them.
    pub fn close_all(&self, code: u16, reason: &'static str) {
        if let Ok(mut connections) = self.connections.lock() {
            for connection in connections.values() {
                connection.ending.close(code, reason);
            }
            connections.clear();
        }
    }

    pub fn count(&self) -> usize {
        self.connections.lock().map_or(0, |c| c.len())
    }
}

impl Connection {
    /// Queues `message` without waiting; whether the connection stays. A
    /// full queue closes it at once as a slow consumer (its writer sends
    /// the close frame as soon as its socket takes one, or resets it).
    fn offer(&self, message: Arc<str>) -> bool {
        match self.queue.try_send(Outgoing::Text(message)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.ending.close(1008, "slow consumer");
                false
            }
            // Its writer has ended: the connection is on its way out.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_whose_queue_is_full_is_dropped_and_the_others_keep_receiving() {
        let subscribers = Subscribers::default();
        let (slow_queue, _slow_never_reads) = mpsc::channel(2);
        let (fast_queue, mut fast) = mpsc::channel(1_000);
        let (slow_ending, slow_end) = Ending::new();
        let (fast_ending, fast_end) = Ending::new();
        let slow = subscribers.register(slow_queue, slow_ending, Framing::Native);
        let fast_id = subscribers.register(fast_queue, fast_ending, Framing::Native);
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
        assert_eq!(
            slow_end.borrow().close,
            Some((1008, "slow consumer")),
            "the slow one is told why, at once"
        );
        assert_eq!(fast_end.borrow().close, None);
    }
}
