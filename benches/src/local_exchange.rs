//! An exchange server running inside a benchmark's process, on free ports,
//! with its data in a temporary directory that goes when it stops.

use std::path::PathBuf;

/// A running exchange; dropping it stops the server and removes its data.
pub struct LocalExchange {
    pub addresses: gateway::Addresses,
    pub admin_token: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    data_dir: PathBuf,
}

const ADMIN_TOKEN: &str = "benchmark-admin-token-0123456789";

impl LocalExchange {
    /// Starts a server with one runtime worker and no rate limits;
    /// `settings` are more `EXCHANGE_*` variables, such as the durability.
    pub fn start(name: &str, settings: &[(&str, &str)]) -> Result<LocalExchange, String> {
        let data_dir = std::env::temp_dir().join(format!("exchange-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut env = vec![
            ("EXCHANGE_DATA_DIR".to_string(), data_dir.display().to_string()),
            ("EXCHANGE_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("EXCHANGE_WS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("EXCHANGE_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
            ("EXCHANGE_RATE_LIMIT_PER_S".to_string(), "1000000".to_string()),
            ("EXCHANGE_RATE_LIMIT_BURST".to_string(), "1000000".to_string()),
            // The load comes from one address: Binance's per-address weight
            // budget would cap it, not the exchange.
            ("EXCHANGE_REQUEST_WEIGHT_PER_MINUTE".to_string(), "1000000000000".to_string()),
        ];
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = gateway::Config::load(None, env).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let result = gateway::run(config, shutdown, move |addresses| {
                let _ = address_sender.send(addresses);
            })
            .await;
            if let Err(error) = result {
                eprintln!("exchange: {error}");
            }
        });
        let addresses = address_receiver.recv().map_err(|_| "the exchange did not start".to_string())?;
        Ok(LocalExchange {
            addresses,
            admin_token: ADMIN_TOKEN,
            stop: Some(stop),
            runtime: Some(runtime),
            data_dir,
        })
    }
}

impl LocalExchange {
    /// The server's runtime, to run something beside it on the same worker.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }
}

impl Drop for LocalExchange {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Give the shutdown (drain, sync, snapshot) a moment before the
        // runtime goes.
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(self.runtime.take());
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
