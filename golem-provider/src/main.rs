//! `golem-provider`: sells this machine's CPU to golem requestors.
//!
//! ```text
//! golem-provider --listen 0.0.0.0:4433 --flavor std:memory=512M,price=10,concurrency=4
//! ```
//!
//! It prints `golem-provider NODE_ID@ADDR` on stdout once it listens; requestors join it with
//! `Golem::builder().join("NODE_ID@ADDR")`. On a public address it can serve as a relay for
//! providers and requestors behind NATs (`--serve-relay 0.0.0.0:3340 --relay-public
//! IP:3340`); nodes that join it use its relay. Logs go to stderr
//! (`--log debug`, or `RUST_LOG`). Ctrl-C (or SIGTERM) shuts it down gracefully.

mod flavor;
mod limits;

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use golem_runtime::identity::NodeKey;
use golem_runtime::net::relay::{RelayServer, RelayServerConfig};
use golem_runtime::net::{NetConfig, Relay};
use golem_runtime::node::{Bootstrap, ProviderNode, ProviderNodeConfig};
use golem_runtime::payment::{Books, Credit, Payee};
use golem_runtime::sandbox::{Sandbox, SandboxConfig};

use crate::flavor::{Flavor, parse_bytes};
use crate::limits::LimitArgs;

/// Sells this machine's CPU to golem requestors: runs their WebAssembly tasks in sandboxes
/// (no files, no network, capped fuel, memory and time) and returns the results.
#[derive(Debug, Parser)]
#[command(name = "golem-provider", version, about, long_about = None)]
struct Args {
    /// UDP address to listen on for QUIC connections.
    #[arg(long, default_value = "0.0.0.0:4433", value_name = "HOST:PORT")]
    listen: SocketAddr,

    /// Address to tell other nodes, when it differs from --listen (behind NAT, or when
    /// listening on 0.0.0.0 and peers cannot see the connecting address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<SocketAddr>,

    /// A node to join, as NODE_ID@HOST:PORT (what that node printed when it started; the
    /// handshake checks the id). Repeat for several. Requestors that reach this provider learn
    /// of the others through it.
    #[arg(long = "bootstrap", value_name = "ADDR")]
    bootstrap: Vec<Bootstrap>,

    /// A relay to keep a home on, where nodes that cannot dial this provider directly (it is
    /// behind a NAT) reach it, as NODE_ID@HOST:PORT: a provider serving as a relay (see
    /// --serve-relay) and its node id. Repeat for several. The relays the bootstrap nodes
    /// announce are used too.
    #[arg(long = "relay", value_name = "ADDR")]
    relays: Vec<Relay>,

    /// Use no relay, neither --relay nor those the bootstrap nodes announce: only nodes that
    /// can dial this provider directly reach it.
    #[arg(long, conflicts_with_all = ["relays", "serve_relay"])]
    no_relays: bool,

    /// Do not ask the router for a port mapping (UPnP, PCP, NAT-PMP).
    #[arg(long)]
    no_port_mapping: bool,

    /// Serve as a relay for other nodes, listening on this address: HTTPS on its TCP port,
    /// QUIC address discovery on the same UDP port. Needs a public address. Nodes that join
    /// this provider use its relay; its TLS certificate is made from the node key, and clients
    /// accept it only with that node id. Without this flag the provider relays for no one.
    #[arg(long, value_name = "HOST:PORT")]
    serve_relay: Option<SocketAddr>,

    /// The address clients reach the relay at, when it differs from --serve-relay (which
    /// listens on 0.0.0.0, or behind a forwarded port).
    #[arg(long, value_name = "HOST:PORT", requires = "serve_relay")]
    relay_public: Option<SocketAddr>,

    /// Most clients the relay serves at once; more are refused.
    #[arg(
        long,
        default_value_t = 256,
        value_name = "N",
        requires = "serve_relay"
    )]
    relay_max_clients: usize,

    /// Bytes a second each relay client may send through the relay (K, M, G).
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = parse_rate, requires = "serve_relay")]
    relay_client_rate: NonZeroU32,

    /// A flavor to sell:
    /// NAME[:memory=SIZE,fuel=N,output=SIZE,log=SIZE,deadline=TIME,price=N,concurrency=N].
    /// Each caps what a requestor may ask of one subtask: memory its linear memory (K, M, G;
    /// default 1G), fuel its instructions (K, M, G, T; default 1T), output its encoded result
    /// (K, M, G; default 64M), log the stdout and stderr kept (K, M, G; default 64K), deadline
    /// its wall time (ms, s, m, h; default 10m). A batch whose limits no flavor holds is not
    /// run. Price is per billion units of fuel (default 0); concurrency is how many subtasks run
    /// at once (default 1). Repeat for several. Default: one flavor "default" with every core.
    #[arg(long = "flavor", value_name = "SPEC")]
    flavors: Vec<Flavor>,

    /// Directory for the node key, the blob cache and compiled modules. Default:
    /// $XDG_DATA_HOME/golem-provider, or ~/.local/share/golem-provider.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Node key file (created on first start, mode 0600). Default: DIR/node.key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,

    /// Keep received modules and contexts, and compiled modules, in memory only, not in
    /// DIR/blobs and DIR/compiled.
    #[arg(long)]
    no_cache: bool,

    /// Where requestors should pay for this provider's work: an Ethereum address (0x and 40
    /// hex digits). Told to every requestor that connects.
    #[arg(long, value_name = "ADDRESS")]
    pay_to: Option<Payee>,

    /// Refuse new work from a requestor that owes more than this (in the smallest currency
    /// unit, by this provider's own books in DIR/books.redb). Default: no limit.
    #[arg(long, value_name = "UNITS")]
    credit_limit: Option<u128>,

    /// With --credit-limit: the most a requestor that has never paid this provider may owe; it
    /// grows by what the requestor pays, up to --credit-limit. Default: a tenth of
    /// --credit-limit.
    #[arg(long, value_name = "UNITS", requires = "credit_limit")]
    first_credit: Option<u128>,

    /// With --credit-limit: the most all requestors together may owe; past it no one is served
    /// on credit until payments arrive, however many node ids ask. Default: ten times
    /// --credit-limit.
    #[arg(long, value_name = "UNITS", requires = "credit_limit")]
    total_credit: Option<u128>,

    /// With --credit-limit: the most all requestors that have never paid may owe together;
    /// past it a new node id is not served on credit, and the rest of --total-credit stays for
    /// requestors that pay. Default: half of --total-credit.
    #[arg(long, value_name = "UNITS", requires = "credit_limit")]
    strangers_credit: Option<u128>,

    /// An Ethereum node's JSON-RPC URL: payments to --pay-to through --chain-contract are
    /// read from it every 10 s and entered in the books (needs the `ethereum` feature).
    #[cfg(feature = "ethereum")]
    #[arg(long, value_name = "URL", requires_all = ["chain_contract", "pay_to"])]
    chain_rpc: Option<String>,

    /// The BatchPay contract requestors pay through (0x and 40 hex digits).
    #[cfg(feature = "ethereum")]
    #[arg(long, value_name = "ADDRESS", requires = "chain_rpc")]
    chain_contract: Option<Payee>,

    /// The first block to read payments from (the contract's deployment block saves reading
    /// the whole chain; payments already in the books are not counted again).
    #[cfg(feature = "ethereum")]
    #[arg(long, value_name = "BLOCK", requires = "chain_rpc")]
    chain_from_block: Option<u64>,

    /// A file holding the secret key of the --pay-to account (64 hex digits): with it the
    /// provider claims from requestors' escrows what they owe beyond its credit, and all they
    /// owe once a release of the escrow is announced.
    #[cfg(feature = "ethereum")]
    #[arg(long, value_name = "FILE", requires = "chain_rpc")]
    chain_key: Option<PathBuf>,

    /// Log filter, such as info, debug or golem_runtime=trace (RUST_LOG is used when unset).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,

    #[command(flatten)]
    limits: LimitArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("golem-provider: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_rate(text: &str) -> Result<NonZeroU32, String> {
    u32::try_from(parse_bytes(text)?)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("`{text}` is not a rate between 1 byte and 4G a second"))
}

fn default_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("golem-provider"));
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".local/share/golem-provider"))
        .ok_or_else(|| "no --dir given and neither XDG_DATA_HOME nor HOME is set".into())
}

fn run(args: Args) -> Result<(), String> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => default_dir()?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key_path = args.key.unwrap_or_else(|| dir.join("node.key"));
    let key = NodeKey::load_or_generate(&key_path).map_err(|error| error.to_string())?;

    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let offers: Vec<_> = if args.flavors.is_empty() {
        vec![Flavor::default_for(u32::try_from(cores).unwrap_or(1)).0]
    } else {
        args.flavors.into_iter().map(|flavor| flavor.0).collect()
    };
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = offers.iter().find(|offer| !names.insert(&offer.flavor)) {
        return Err(format!("flavor `{}` is given twice", twice.flavor));
    }
    let threads = offers
        .iter()
        .map(|offer| offer.concurrency as usize)
        .max()
        .unwrap_or(1);
    let mut sandbox =
        SandboxConfig::with_instances(u32::try_from(threads * 2 + 2).unwrap_or(u32::MAX));
    sandbox.max_memory_bytes = offers
        .iter()
        .map(|offer| usize::try_from(offer.memory_bytes).unwrap_or(usize::MAX))
        .max()
        .unwrap_or(sandbox.max_memory_bytes);
    if !args.no_cache {
        sandbox.compiled_cache_dir = Some(dir.join("compiled"));
    }
    args.limits.apply(&mut sandbox);
    let sandbox = Arc::new(Sandbox::new(sandbox).map_err(|error| error.to_string())?);

    let books = Arc::new(Books::open(&dir.join("books.redb")).map_err(|error| error.to_string())?);
    #[cfg(feature = "ethereum")]
    let watcher = match (&args.chain_rpc, args.chain_contract, args.pay_to) {
        (Some(rpc), Some(Payee::Ethereum(contract)), Some(Payee::Ethereum(payee))) => Some(
            golem_runtime::payment::ethereum::Watcher::new(
                rpc,
                contract,
                payee,
                args.chain_from_block.unwrap_or(0),
            )
            .map_err(|error| error.to_string())?,
        ),
        _ => None,
    };
    let mut net = NetConfig::internet(args.listen);
    net.relays = args.relays;
    net.learn_relays = !args.no_relays;
    net.port_mapping &= !args.no_port_mapping;
    let relay_server = args.serve_relay.map(|bind| RelayServerConfig {
        bind,
        public: args.relay_public,
        max_clients: args.relay_max_clients,
        client_bytes_per_second: args.relay_client_rate,
    });
    let credit = args.credit_limit.map(|limit| {
        let default = Credit::new(limit);
        let total = args.total_credit.unwrap_or(default.total);
        Credit {
            per_requestor: limit,
            first: args.first_credit.unwrap_or(default.first),
            strangers: args.strangers_credit.unwrap_or(total / 2),
            total,
        }
    });
    let mut config = ProviderNodeConfig {
        net,
        advertise: args.advertise,
        offers,
        bootstrap: args.bootstrap,
        cache_dir: (!args.no_cache).then(|| dir.join("blobs")),
        threads: Some(threads),
        limits: args.limits.limits(),
        payee: args.pay_to,
        books: Some(Arc::clone(&books)),
        credit,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("golem-net")
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the network runtime: {error}"))?;
    runtime.block_on(async move {
        // The relay first, so that this node keeps its home there and announces it.
        let relay = match &relay_server {
            Some(relay_server) => {
                let relay = RelayServer::spawn(&key, relay_server)
                    .await
                    .map_err(|error| format!("cannot serve as a relay: {error}"))?;
                config.net.relays.push(relay.relay());
                Some(relay)
            }
            None => None,
        };
        let node = ProviderNode::start(&key, sandbox, config)
            .await
            .map_err(|error| error.to_string())?;
        #[cfg(feature = "ethereum")]
        if let Some(watcher) = watcher {
            let claimer = match (&args.chain_key, &args.chain_rpc, args.chain_contract) {
                (Some(file), Some(rpc), Some(Payee::Ethereum(contract))) => {
                    let secret = read_secret(file)?;
                    let config = golem_runtime::payment::ethereum::ChainConfig::new(
                        rpc.clone(),
                        secret,
                        contract,
                    );
                    let chain = golem_runtime::payment::ethereum::Chain::connect(config)
                        .await
                        .map_err(|error| error.to_string())?;
                    if args.pay_to != Some(Payee::Ethereum(chain.payer())) {
                        return Err(format!(
                            "--chain-key is the key of {}, not of --pay-to",
                            Payee::Ethereum(chain.payer())
                        ));
                    }
                    Some(chain)
                }
                _ => None,
            };
            tokio::spawn(watch_payments(watcher, Arc::clone(&books), claimer, credit));
        }
        #[cfg(not(feature = "ethereum"))]
        drop(books);
        for offer in node.offers() {
            tracing::info!(
                flavor = %offer.flavor,
                memory = offer.memory_bytes,
                fuel = offer.fuel,
                price = offer.price_per_gfuel,
                concurrency = offer.concurrency,
                "offering"
            );
        }
        // The one line on stdout: how to reach this node.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "golem-provider {}@{}", node.node_id(), node.addr());
        let _ = stdout.flush();
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown();
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
        // Let the close frames go out before the process ends.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Ok::<(), String>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Reads the payee's secret key: 64 hex digits, `0x` before them or not.
#[cfg(feature = "ethereum")]
fn read_secret(file: &std::path::Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    let hex = text.trim();
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect();
    bytes
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            format!(
                "{} does not hold a secret key (64 hex digits)",
                file.display()
            )
        })
}

/// Enters the payments and escrows the chain shows in the books every 10 s and, with the
/// payee's key, claims from escrows what is owed (after each poll, so a claim is in the books
/// before the next).
#[cfg(feature = "ethereum")]
async fn watch_payments(
    mut watcher: golem_runtime::payment::ethereum::Watcher,
    books: Arc<Books>,
    claimer: Option<golem_runtime::payment::ethereum::Chain>,
    credit: Option<Credit>,
) {
    loop {
        let polled = watcher.poll(&books).await;
        match &polled {
            Ok(0) => {}
            Ok(new) => tracing::info!(new, "payments arrived"),
            Err(error) => tracing::warn!(%error, "cannot read payments from the chain"),
        }
        // Claims only from books the chain has just brought up to date.
        if polled.is_ok()
            && let Some(chain) = &claimer
            && let Err(error) = chain.claim_owed(&books, credit).await
        {
            tracing::warn!(%error, "cannot claim from the escrows");
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the provider");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
