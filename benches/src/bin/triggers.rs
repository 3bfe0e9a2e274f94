//! Triggers fired per second with many orders waiting: 100,000 stop-loss
//! sells (market and limit) wait below the last trade price, 100 per tick,
//! over a bid book deep enough to absorb them; market sells then walk the
//! price down one tick per command, and each tick's stops fire and sell
//! into the bids. Prints the rate of fired orders (each one's entry and
//! trade included), the latency of one tick's command, and the cost of
//! placing the waiting orders.
//!
//! ```text
//! cargo run --release -p benches --bin triggers                   # 100,000 waiting
//! cargo run --release -p benches --bin triggers -- --waiting 10000 --runs 1
//! ```

use std::process::ExitCode;
use std::time::Instant;

use benches::report::{format_rate, latency_histogram, machine, median, percentiles, rate_per_s};
use clap::Parser;
use engine_core::{
    AssetId, Command, Engine, EngineLimits, Event, EventKind, Lots, MarketId, MarketRules, MarketStatus,
    NewOrder, OrderKind, SelfTradePrevention, Side, StampedCommand, Symbol, Ticks, TimeInForce, Trigger,
    TriggerKind, Units, UserId,
};

#[derive(Parser, Debug)]
#[command(about = "Fires stop orders with many waiting and prints triggers fired per second")]
struct Args {
    /// Stop orders waiting before the price walks into them.
    #[arg(long, default_value_t = 100_000)]
    waiting: u32,
    /// Waiting orders per tick of stop price.
    #[arg(long, default_value_t = 100)]
    per_tick: u32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const USERS: u32 = 1_000;
const LAST_TICKS: u64 = 5_000_000;
/// Lots of each resting bid: far more than a tick's stops sell.
const BID_LOTS: u64 = 100_000_000;
/// Users 0..BIDDERS hold the bids; the stops belong to the others (so that
/// self-trade prevention never meets them); the last user sells the walk.
const BIDDERS: u32 = 500;
const SELLER: u32 = USERS - 1;

struct Feeder {
    engine: Engine,
    seq: u64,
    events: Vec<Event>,
}

impl Feeder {
    fn apply(&mut self, command: Command) {
        self.seq += 1;
        self.events.clear();
        let stamped = StampedCommand { seq: self.seq, timestamp_ns: self.seq * 100, command };
        self.engine.apply(&stamped, &mut self.events).expect("commands are numbered in order");
        if let Some(reason) = self.events.iter().find_map(|e| match e.kind {
            EventKind::Rejected { reason, .. } => Some(reason),
            _ => None,
        }) {
            panic!("{command:?} was refused: {reason}");
        }
    }
}

fn order(user: u32, side: Side, kind: OrderKind) -> Command {
    Command::PlaceOrder(NewOrder {
        user: UserId(user),
        market: MarketId(0),
        side,
        kind,
        client_order_id: None,
        stp: SelfTradePrevention::CancelTaker,
    })
}

/// Reference data, funds, the bid book, a trade that sets the last price;
/// then (timed) the waiting orders.
fn setup(args: &Args) -> (Feeder, f64, u64) {
    let limits = EngineLimits {
        open_orders_per_user_max: args.waiting / (SELLER - BIDDERS) + 1_000,
        orders_max: args.waiting + 1_000_000,
        ..EngineLimits::default()
    };
    let mut f = Feeder { engine: Engine::new(limits), seq: 0, events: Vec::with_capacity(1 << 16) };
    f.apply(Command::CreateAsset { symbol: Symbol::new("BTC").expect("valid"), decimals: 8 });
    f.apply(Command::CreateAsset { symbol: Symbol::new("USDT").expect("valid"), decimals: 6 });
    let rules = MarketRules {
        base: AssetId(0),
        quote: AssetId(1),
        base_units_per_lot: 1,
        quote_units_per_tick: 1,
        min_qty: Lots(1),
        min_notional: Units(1),
        maker_fee_ppm: 200,
        taker_fee_ppm: 500,
    };
    f.apply(Command::CreateMarket { rules, status: MarketStatus::Open });
    for user in 0..USERS {
        f.apply(Command::CreateUser);
        for asset in 0..2 {
            let amount = Units(u64::MAX / 4 / u64::from(USERS));
            f.apply(Command::Deposit { user: UserId(user), asset: AssetId(asset), amount });
        }
    }
    let ticks = u64::from(args.waiting.div_ceil(args.per_tick));
    // A bid at every tick the walk reaches, and one ask to set the last price.
    for tick in 0..=ticks + 1 {
        let kind =
            OrderKind::Limit { price: Ticks(LAST_TICKS - tick), qty: Lots(BID_LOTS), tif: TimeInForce::Gtc };
        f.apply(order((tick % u64::from(BIDDERS)) as u32, Side::Buy, kind));
    }
    f.apply(order(SELLER, Side::Sell, OrderKind::Market { qty: Lots(1) }));
    let started = Instant::now();
    for i in 0..args.waiting {
        let tick = 1 + u64::from(i / args.per_tick);
        let trigger =
            Trigger { kind: TriggerKind::StopLoss, stop: Some(Ticks(LAST_TICKS - tick)), trailing_bips: 0 };
        let qty = Lots(1 + u64::from(i % 5));
        let kind = if i % 2 == 0 {
            OrderKind::StopMarket { trigger, qty }
        } else {
            let price = Ticks(LAST_TICKS - tick - 1);
            OrderKind::StopLimit { trigger, price, qty, tif: TimeInForce::Ioc, visible: Lots(0) }
        };
        f.apply(order(BIDDERS + i % (SELLER - BIDDERS), Side::Sell, kind));
    }
    let placed_per_s = rate_per_s(u64::from(args.waiting), started.elapsed());
    (f, placed_per_s, ticks)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.waiting == 0 || args.per_tick == 0 {
        eprintln!("error: --waiting and --per-tick must be at least 1");
        return ExitCode::FAILURE;
    }
    println!("machine: {}", machine());
    println!("{} stop orders waiting, {} per tick below the last price", args.waiting, args.per_tick);
    let mut rates = Vec::new();
    for run in 1..=args.runs {
        let (mut f, placed_per_s, ticks) = setup(&args);
        let mut histogram = latency_histogram();
        let mut fired = 0u64;
        let mut elapsed = std::time::Duration::ZERO;
        for tick in 0..ticks {
            // Takes the rest of the bid at this tick: the next trade is a tick lower.
            let level = f.engine.depth(MarketId(0), Side::Buy, 1);
            let Some(&(price, qty)) = level.first() else { break };
            assert_eq!(price, Ticks(LAST_TICKS - tick), "the walk goes one tick at a time");
            let command = order(SELLER, Side::Sell, OrderKind::Market { qty: Lots(qty.0 + 1) });
            let started = Instant::now();
            f.apply(command);
            let took = started.elapsed();
            elapsed += took;
            histogram.saturating_record((took.as_nanos() as u64).max(1));
            fired +=
                f.events.iter().filter(|e| matches!(e.kind, EventKind::OrderTriggered { .. })).count() as u64;
        }
        assert_eq!(fired, u64::from(args.waiting), "every waiting order fired once");
        let per_s = rate_per_s(fired, elapsed);
        println!(
            "run {run}: {} triggers fired/s ({fired} fired in {ticks} commands); placing them: {} orders/s",
            format_rate(per_s),
            format_rate(placed_per_s),
        );
        println!(
            "       latency per command (one tick, {} fired): {}",
            args.per_tick,
            percentiles(&histogram)
        );
        f.engine.check_invariants().expect("the engine's invariants hold");
        rates.push(per_s);
    }
    println!("median of {} runs: {} triggers fired/s", args.runs, format_rate(median(&mut rates)));
    ExitCode::SUCCESS
}
