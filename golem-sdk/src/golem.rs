//! The [`Golem`] handle: where tasks run, with which limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use golem_runtime::identity::{NodeId, NodeKey};
use golem_runtime::market::Demand;
use golem_runtime::net::{NetConfig, Relay};
use golem_runtime::node::{
    Bootstrap, ProviderInfo, ProviderNode, ProviderNodeConfig, Requestor, RequestorConfig,
    TransferStats,
};
use golem_runtime::payment::PaymentHook;
use golem_runtime::proto::requestor::SchedulerConfig;
use golem_runtime::reputation::Record;
use golem_runtime::sandbox::{EngineFingerprint, Limits, Sandbox, SandboxConfig, SandboxError};
use golem_runtime::verify::Verify;

use crate::iterate::{Iterated, Until};
use crate::map_reduce::MapReduce;
use crate::par_for::{NoContext, ParFor};
use crate::{Error, Task};

/// A handle to the providers that run tasks. Cheap to clone.
///
/// Create one with [`Golem::local`] (providers in this process, each a QUIC endpoint on
/// 127.0.0.1) or [`Golem::builder`] (to [`join`](GolemBuilder::join) providers elsewhere).
#[derive(Debug, Clone)]
pub struct Golem {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) requestor: Requestor,
    pub(crate) limits: Limits,
    pub(crate) verify: Verify,
    /// The engine of the requestor's own sandbox, which re-runs results.
    pub(crate) engine: EngineFingerprint,
    local: Vec<ProviderNode>,
    network: tokio::runtime::Handle,
    /// Runs the network: QUIC endpoints, sessions, timers. Tasks run on the providers' own
    /// threads.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.requestor.shutdown();
        for provider in &self.local {
            provider.shutdown();
        }
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so a Golem may be dropped inside any async runtime.
            runtime.shutdown_background();
        }
    }
}

impl Golem {
    /// In-process providers, one per available core, each listening on its own QUIC endpoint on
    /// 127.0.0.1, with default limits.
    pub async fn local() -> Result<Self, Error> {
        Self::builder().build().await
    }

    /// [`Golem::local`] for programs that are not async.
    pub fn local_blocking() -> Result<Self, Error> {
        Self::builder().build_blocking()
    }

    /// Configures a [`Golem`].
    pub fn builder() -> GolemBuilder {
        GolemBuilder::default()
    }

    /// This requestor's node id: providers know it by this, and their books keep what it owes
    /// under it.
    pub fn node_id(&self) -> NodeId {
        self.inner.requestor.node_id()
    }

    /// Pays on chain what `ledger` owes providers that named an Ethereum payee, one
    /// transaction per settlement, tagged with this requestor's node id so providers can tell
    /// whose debt it settles ([`Chain::settle`](golem_runtime::payment::ethereum::Chain::settle)).
    /// Runs on golem's network runtime, so it may be awaited from any executor.
    #[cfg(feature = "ethereum")]
    pub async fn settle(
        &self,
        ledger: Arc<golem_runtime::payment::Ledger>,
        chain: golem_runtime::payment::ethereum::Chain,
    ) -> Result<golem_runtime::payment::ethereum::SettleReport, Error> {
        let from = self.node_id();
        let settle = async move { chain.settle(&ledger, from).await };
        match self.spawn(settle).await {
            Ok(report) => Ok(report?),
            Err(_) => Err(Error::Network("the network runtime stopped".into())),
        }
    }

    /// Number of providers jobs are scheduled on now.
    pub fn providers(&self) -> usize {
        self.inner.requestor.providers().len()
    }

    /// The providers jobs are scheduled on now, with the offer bought from each.
    pub fn provider_list(&self) -> Vec<ProviderInfo> {
        self.inner.requestor.providers()
    }

    /// Every provider heard of on the gossip topic and believed (its signed announcement
    /// checked), whether jobs are scheduled on it or not: those banned for cheating, or whose
    /// offers do not match, are heard of and never used.
    pub fn announced(&self) -> Vec<golem_runtime::discovery::Announcement> {
        self.inner.requestor.announced()
    }

    /// Waits until at least `count` providers are known or `timeout` passes; returns how many
    /// there are.
    pub async fn wait_for_providers(&self, count: usize, timeout: Duration) -> usize {
        let wait = self.inner.requestor.wait_for_providers(count, timeout);
        self.spawn(wait).await.unwrap_or(0)
    }

    /// What this requestor knows of every provider it used: results accepted and verified,
    /// times caught, bans.
    pub async fn records(&self) -> Vec<(NodeId, Record)> {
        let records = self.inner.requestor.records();
        self.spawn(records).await.unwrap_or_default()
    }

    /// Lifts the ban on a provider caught cheating; its results are checked from the initial
    /// rate again.
    pub fn forgive(&self, node: NodeId) {
        self.inner.requestor.forgive(node);
    }

    /// How results are verified unless a call says otherwise.
    pub fn verify(&self) -> &Verify {
        &self.inner.verify
    }

    /// Blob traffic to providers so far (modules, contexts, large inputs).
    pub fn transfer_stats(&self) -> TransferStats {
        self.inner.requestor.transfer_stats()
    }

    /// Runs `future` on the network runtime; the handle can be awaited from any executor.
    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.network.spawn(future)
    }

    /// The limits every subtask runs under, unless a call overrides them.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Runs `task` once per item, in sandboxes, and returns the outputs in input order.
    ///
    /// Await the returned builder (after [`ParFor::with`] for a task that takes a context), or
    /// call [`ParFor::run`] to block.
    pub fn par_for<T, I>(&self, items: I, task: T) -> ParFor<'_, T, NoContext>
    where
        T: Task,
        I: IntoIterator<Item = T::Input>,
    {
        ParFor::new(self, items.into_iter().collect(), task)
    }

    /// Runs `task` once per item in sandboxes, then folds the outputs in input order with
    /// `reduce`, starting from `identity()`, on this machine.
    pub fn map_reduce<T, I, A, Id, R>(
        &self,
        items: I,
        task: T,
        identity: Id,
        reduce: R,
    ) -> MapReduce<'_, T, NoContext, Id, R>
    where
        T: Task,
        I: IntoIterator<Item = T::Input>,
        Id: FnOnce() -> A,
        R: FnMut(A, T::Output) -> A,
    {
        MapReduce::new(self.par_for(items, task), identity, reduce)
    }

    /// Runs rounds until `until` says stop: each round, `step` gets this handle, the round
    /// number (from 0) and the last state, and returns the next state, typically by running a
    /// `par_for` whose results decide it.
    pub async fn iterate<S, F>(
        &self,
        init: S,
        mut step: F,
        until: Until<S>,
    ) -> Result<Iterated<S>, Error>
    where
        F: AsyncFnMut(&Golem, u32, &S) -> Result<S, Error>,
    {
        crate::iterate::run(init, until, async |round, state| {
            step(self, round, state).await
        })
        .await
    }

    /// [`Golem::iterate`] with a blocking `step`, for programs that are not async.
    pub fn iterate_blocking<S, F>(
        &self,
        init: S,
        mut step: F,
        until: Until<S>,
    ) -> Result<Iterated<S>, Error>
    where
        F: FnMut(&Golem, u32, &S) -> Result<S, Error>,
    {
        crate::blocking::block_on(self.iterate(
            init,
            async |golem, round, state| step(golem, round, state),
            until,
        ))
    }
}

/// Builds a [`Golem`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct GolemBuilder {
    providers: Option<usize>,
    limits: Limits,
    sandbox: Option<SandboxConfig>,
    join: Vec<String>,
    relays: Vec<String>,
    port_mapping: Option<bool>,
    min_providers: Option<usize>,
    wait: Option<Duration>,
    max_price: Option<u64>,
    scheduler: Option<SchedulerConfig>,
    verify: Verify,
    reputation: Option<PathBuf>,
    check_threads: Option<usize>,
    payments: Option<Hook>,
    /// Where compiled modules are kept: `None` for the default directory, `Some(None)` for
    /// none.
    compiled_cache: Option<Option<PathBuf>>,
}

/// Where the in-process providers keep compiled modules unless told otherwise:
/// `$XDG_CACHE_HOME/golem/compiled`, or `~/.cache/golem/compiled`.
fn default_compiled_cache() -> Option<PathBuf> {
    let set = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let base = set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("golem").join("compiled"))
}

/// A payment hook in the builder.
#[derive(Clone)]
struct Hook(Arc<dyn PaymentHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PaymentHook")
    }
}

impl GolemBuilder {
    /// Number of in-process providers (default: the available cores, or none when the
    /// builder [`join`](Self::join)s a network).
    pub fn providers(mut self, providers: usize) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Joins the network at `addr`, `NODE_ID@HOST:PORT` (what a provider daemon prints when it
    /// starts; the handshake checks that the node there holds that id's key): the node there
    /// and every provider it knows of are used, and providers that join later are picked up as
    /// they appear.
    pub fn join(mut self, addr: impl Into<String>) -> Self {
        self.join.push(addr.into());
        self
    }

    /// A relay to reach providers behind NATs through, as `NODE_ID@HOST:PORT` (a provider
    /// serving as a relay, `golem-provider --serve-relay`). Repeat for several. Without it, the
    /// relays the joined nodes announce are used.
    pub fn relay(mut self, addr: impl Into<String>) -> Self {
        self.relays.push(addr.into());
        self
    }

    /// Asks the router for a port mapping (UPnP, PCP, NAT-PMP) when joining a network
    /// (default: yes).
    pub fn port_mapping(mut self, port_mapping: bool) -> Self {
        self.port_mapping = Some(port_mapping);
        self
    }

    /// Providers to wait for before [`build`](Self::build) returns (default: every
    /// in-process provider, plus one when joining a network).
    pub fn min_providers(mut self, count: usize) -> Self {
        self.min_providers = Some(count);
        self
    }

    /// How long [`build`](Self::build) waits for providers (default: 10 s).
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// Highest price per billion units of fuel to pay; providers asking more are not used.
    pub fn max_price(mut self, price_per_gfuel: u64) -> Self {
        self.max_price = Some(price_per_gfuel);
        self
    }

    /// Limits of every subtask (default: [`Limits::default`]). Providers whose flavors cannot
    /// hold them are not used.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Engine settings of the in-process providers and of this machine's re-runs of results
    /// (default: [`SandboxConfig::default`] sized for them). Verification by re-running needs
    /// providers whose engine fingerprint equals this one.
    pub fn sandbox(mut self, config: SandboxConfig) -> Self {
        self.sandbox = Some(config);
        self
    }

    /// Directory where the in-process providers keep compiled modules across runs, keyed by
    /// module hash and engine fingerprint as a provider daemon keeps them in `DIR/compiled`
    /// (default: `$XDG_CACHE_HOME/golem/compiled`, or `~/.cache/golem/compiled`; when the
    /// default cannot be used, modules are compiled in memory). A job whose module an earlier
    /// run compiled then starts without compiling it again. Settings given with
    /// [`sandbox`](Self::sandbox) take precedence.
    pub fn compiled_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.compiled_cache = Some(Some(dir.into()));
        self
    }

    /// Keeps no compiled module on disk: each process compiles the modules it runs.
    pub fn no_compiled_cache(mut self) -> Self {
        self.compiled_cache = Some(None);
        self
    }

    /// Scheduling settings: batch sizes, deadlines, retries, backup copies.
    pub fn scheduler(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = Some(config);
        self
    }

    /// How results are verified by default (default: [`Verify::None`] for in-process
    /// providers, which are trusted; choose a strategy when joining a network).
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// Keeps provider records (reputation, bans) in the database at `path`, across runs
    /// (default: in memory).
    pub fn reputation(mut self, path: impl Into<PathBuf>) -> Self {
        self.reputation = Some(path.into());
        self
    }

    /// Hands the priced receipts of every finished job's accepted results to `hook` (for
    /// instance a [`Ledger`](golem_runtime::payment::Ledger)), before the job's result is
    /// returned. Receipts of providers caught cheating are never among them.
    pub fn payments(mut self, hook: Arc<dyn PaymentHook>) -> Self {
        self.payments = Some(Hook(hook));
        self
    }

    /// Threads that re-run results to check them on this machine (default: 1).
    pub fn check_threads(mut self, threads: usize) -> Self {
        self.check_threads = Some(threads.max(1));
        self
    }

    /// Starts the providers and the requestor, and waits for the providers to be connected.
    pub async fn build(self) -> Result<Golem, Error> {
        let targets = self
            .join
            .iter()
            .map(|text| {
                text.parse::<Bootstrap>()
                    .map_err(|error| Error::Address(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let relays = self
            .relays
            .iter()
            .map(|text| {
                text.parse::<Relay>()
                    .map_err(|error| Error::Address(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local = self.providers.unwrap_or(if targets.is_empty() {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            0
        });
        let wanted = self
            .min_providers
            .unwrap_or(local + usize::from(!targets.is_empty()));
        let timeout = self.wait.unwrap_or(Duration::from_secs(10));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("golem-net")
            .enable_all()
            .build()
            .map_err(|error| {
                Error::Network(format!("cannot start the network runtime: {error}"))
            })?;
        let key = || NodeKey::generate().map_err(|error| Error::Network(error.to_string()));

        // One engine for the in-process providers and the requestor's checks. Two instance
        // slots per provider leave room for the module check at compile time.
        let check_threads = self.check_threads.unwrap_or(1);
        let slots = local.saturating_mul(2) + check_threads + 2;
        let default_cache = self.sandbox.is_none() && self.compiled_cache.is_none();
        let compiled_cache = match &self.compiled_cache {
            None => default_compiled_cache(),
            Some(dir) => dir.clone(),
        };
        let mut config = self.sandbox.unwrap_or_else(|| {
            let mut config =
                SandboxConfig::with_instances(u32::try_from(slots).unwrap_or(u32::MAX));
            config.compiled_cache_dir = compiled_cache;
            config
        });
        let sandbox = match Sandbox::new(config.clone()) {
            // The default directory is a convenience: without it, modules compile in memory.
            Err(SandboxError::Cache { path, message }) if default_cache => {
                tracing::warn!(path = %path.display(), %message, "no compiled-module cache; modules are compiled in memory");
                config.compiled_cache_dir = None;
                Sandbox::new(config)?
            }
            built => built?,
        };
        let sandbox = Arc::new(sandbox);
        let mut demand = Demand::for_limits(&self.limits);
        demand.max_price_per_gfuel = self.max_price;
        let requestor_config = RequestorConfig {
            net: if targets.is_empty() && relays.is_empty() {
                NetConfig::loopback()
            } else {
                // A network of this machine only is joined on loopback, with no router.
                let local = targets.iter().all(|target| target.addr.ip().is_loopback())
                    && relays.iter().all(|relay| relay.addr.ip().is_loopback());
                let ip = if local { [127, 0, 0, 1] } else { [0, 0, 0, 0] };
                let mut net = NetConfig::internet((ip, 0).into());
                net.relays = relays;
                net.port_mapping = net.port_mapping && self.port_mapping.unwrap_or(true);
                net
            },
            demand,
            scheduler: self.scheduler.unwrap_or_default(),
            checker: Some(Arc::clone(&sandbox)),
            check_threads,
            reputation: self.reputation,
            payments: self.payments.map(|hook| hook.0),
            ..RequestorConfig::default()
        };
        let keys = (0..=local).map(|_| key()).collect::<Result<Vec<_>, _>>()?;
        // Endpoints bind on the network runtime, whatever executor awaits `build`.
        let providers_sandbox = Arc::clone(&sandbox);
        let started = runtime.spawn(async move {
            let mut providers = Vec::with_capacity(local);
            for key in &keys[1..] {
                let config = ProviderNodeConfig::local(&providers_sandbox, 1);
                let sandbox = Arc::clone(&providers_sandbox);
                providers.push(ProviderNode::start(key, sandbox, config).await?);
            }
            let requestor = Requestor::start(&keys[0], requestor_config).await?;
            for provider in &providers {
                requestor.join(provider.bootstrap());
            }
            for target in targets {
                requestor.join(target);
            }
            Ok::<_, Error>((providers, requestor))
        });
        let started = started.await.unwrap_or_else(|error| {
            Err(Error::Network(format!(
                "the network runtime stopped while starting: {error}"
            )))
        });
        let (providers, requestor) = match started {
            Ok(started) => started,
            Err(error) => {
                // Never blocks: `build` may be awaited inside another runtime.
                runtime.shutdown_background();
                return Err(error);
            }
        };
        let wait = runtime.spawn(requestor.wait_for_providers(wanted, timeout));
        let golem = Golem {
            inner: Arc::new(Inner {
                requestor,
                limits: self.limits,
                verify: self.verify,
                engine: sandbox.fingerprint(),
                local: providers,
                network: runtime.handle().clone(),
                runtime: Some(runtime),
            }),
        };
        let found = wait.await.unwrap_or(0);
        if found < wanted {
            return Err(Error::NoProviders {
                wanted,
                found,
                waited: timeout,
            });
        }
        Ok(golem)
    }

    /// [`GolemBuilder::build`] for programs that are not async.
    pub fn build_blocking(self) -> Result<Golem, Error> {
        crate::blocking::block_on(self.build())
    }
}
