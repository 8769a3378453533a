//! Through real NATs: network namespaces joined by veth pairs, Linux routers that masquerade
//! with nftables, provider daemons as processes inside them, and a requestor on a thread moved
//! into another.
//!
//! ```text
//!              "internet" 198.51.100.0/24 (a bridge)
//!        ┌──────────────┬──────────────────────┬───────────────────┐
//!   public .1       router A .2              router B .3
//!   bootstrap,      masquerade             masquerade
//!   relay           10.0.1.0/24            10.0.2.0/24
//!                   provider 10.0.1.2      requestor 10.0.2.2
//! ```
//!
//! The public node sells at a price the requestor refuses, so the work runs on the provider
//! behind NAT A. Router A maps a LAN socket to one public port whatever the destination
//! (Linux keeps the source port), or to a new random port per destination (symmetric NAT,
//! which hole punching cannot cross). Needs root, `ip` (iproute2) and `nft` (nftables): under
//! `CI=true` a missing one fails the test; elsewhere the test says so and does nothing.
//! Everything stays inside the namespaces, which are removed at the end.

mod common;

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use golem::{Golem, Route};
use golem_examples::mandelbrot::{Scene, render};

use rustix::process::Signal;

use crate::common::Daemon;

/// The namespaces of one test, removed when dropped.
struct Lab {
    prefix: String,
    names: Vec<String>,
}

const PUBLIC: &str = "198.51.100.1";

/// How long jobs keep running on the direct path after the relay is killed or frozen.
const RELAY_GONE_FOR: Duration = Duration::from_secs(25);

/// Longest a job may take here (each takes well under a second when all is well).
const JOB_WAIT: Duration = Duration::from_secs(60);

impl Lab {
    /// Builds the topology above; `symmetric` makes router A a symmetric NAT.
    fn build(tag: &str, symmetric: bool) -> Option<Self> {
        let prefix = format!("g{}{tag}", std::process::id() % 100_000);
        if let Err(missing) = capable(&prefix) {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!("the NAT test needs root, iproute2 and nftables: {missing}");
            }
            eprintln!("NAT test not run: {missing}");
            return None;
        }
        let mut lab = Self {
            prefix,
            names: Vec::new(),
        };
        for name in ["inet", "pub", "ra", "ha", "rb", "hb"] {
            let ns = lab.ns(name);
            // Left over by a killed run of a process with the same id.
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            lab.names.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let inet = lab.ns("inet");
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);
        // The public node, and each router's WAN side, on the bridge.
        for (port, ns, dev, addr) in [
            ("to-pub", "pub", "eth0", "198.51.100.1/24"),
            ("to-a", "ra", "wan", "198.51.100.2/24"),
            ("to-b", "rb", "wan", "198.51.100.3/24"),
        ] {
            let ns = lab.ns(ns);
            ip(&[
                "-n", &inet, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", &ns,
            ]);
            ip(&["-n", &inet, "link", "set", port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", &ns, "link", "set", dev, "up"]);
        }
        // Each router's LAN, with one host behind it.
        for (router, host, lan) in [("ra", "ha", "10.0.1"), ("rb", "hb", "10.0.2")] {
            let (router, host) = (lab.ns(router), lab.ns(host));
            ip(&[
                "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", &host,
            ]);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{lan}.1/24"),
                "dev",
                "lan",
            ]);
            ip(&["-n", &router, "link", "set", "lan", "up"]);
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{lan}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &host, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &host,
                "route",
                "add",
                "default",
                "via",
                &format!("{lan}.1"),
            ]);
            in_ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let random = if symmetric && router.ends_with("ra") {
                " fully-random"
            } else {
                ""
            };
            // Masquerade on the way out; on the way in, only what answers traffic sent out
            // (a home router drops the rest silently).
            let nat = format!(
                "add table ip nat; \
                 add chain ip nat post {{ type nat hook postrouting priority 100; }}; \
                 add rule ip nat post oifname \"wan\" masquerade{random}; \
                 add table ip filter; \
                 add chain ip filter input {{ type filter hook input priority 0; }}; \
                 add rule ip filter input iifname \"wan\" ct state established,related accept; \
                 add rule ip filter input iifname \"wan\" drop; \
                 add chain ip filter forward {{ type filter hook forward priority 0; }}; \
                 add rule ip filter forward iifname \"wan\" ct state established,related accept; \
                 add rule ip filter forward iifname \"wan\" drop"
            );
            in_ns(&router, &["nft", &nat]);
        }
        Some(lab)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Whether this process can build the lab named `prefix`, or what is missing.
fn capable(prefix: &str) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not running as root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|output| output.status.success());
        if !found {
            return Err(format!("`{tool}` not found (Debian package {package})"));
        }
    }
    // Root without the capability to make namespaces (in a container, say) cannot either.
    let probe = format!("{prefix}-probe");
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match made {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "cannot make a network namespace: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("cannot run ip: {error}")),
    }
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn in_ns(ns: &str, command: &[&str]) {
    let args: Vec<&str> = ["netns", "exec", ns]
        .iter()
        .copied()
        .chain(command.iter().copied())
        .collect();
    run("ip", &args);
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `work` on a thread in network namespace `ns`: every socket it and the threads it
/// starts open is in that namespace.
fn on_host<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("enter the namespace");
        work()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The public node: bootstrap and relay, selling only at a price the requestor refuses.
fn public_node(lab: &Lab) -> Daemon {
    Daemon::start_in(
        Some(&lab.ns("pub")),
        &format!("{}-pub", lab.prefix),
        &[
            "--listen",
            &format!("{PUBLIC}:4433"),
            "--serve-relay",
            &format!("{PUBLIC}:3340"),
            "--no-port-mapping",
            "--flavor",
            "dear:price=1000000",
        ],
    )
}

/// The provider behind NAT A, told of the public node only.
fn provider(lab: &Lab, public: &Daemon) -> Daemon {
    Daemon::start_in(
        Some(&lab.ns("ha")),
        &format!("{}-a", lab.prefix),
        &[
            "--listen",
            "0.0.0.0:4433",
            "--bootstrap",
            &public.address,
            "--no-port-mapping",
            "--flavor",
            "std:price=10,concurrency=2",
        ],
    )
}

fn scene_of(width: u32, height: u32) -> Scene {
    Scene {
        width,
        height,
        ..Scene::default()
    }
}

/// Joins the public node from behind NAT B, then renders on the provider behind NAT A until
/// the route is direct or `direct_within` has passed (it must then be direct if
/// `expect_direct`, relayed if not); each picture must equal a native render.
/// Then one larger job runs, and `mid_job` runs (on another thread, the job's progress waiting
/// for it) when a tenth of its tiles are in: that job must complete too, and so must the jobs run one after another for `then_for`
/// after it (long enough for iroh to notice a relay gone: it pings it every 15 s).
fn requestor(
    lab: &Lab,
    public: &str,
    provider: &str,
    direct_within: Duration,
    expect_direct: bool,
    mid_job: impl FnOnce() + Send + 'static,
    then_for: Duration,
) -> Vec<Route> {
    let (public, provider) = (public.to_owned(), provider.to_owned());
    let (early_sender, early_receiver) = mpsc::channel::<()>();
    let (resume_sender, resume_receiver) = mpsc::channel::<()>();
    let done_at = Arc::new(Mutex::new(None::<Instant>));
    let done = Arc::clone(&done_at);
    let waiter = std::thread::spawn(move || {
        if early_receiver.recv().is_ok() {
            eprintln!("a tenth of the larger job is in");
            mid_job();
            *done.lock().expect("lock") = Some(Instant::now());
            let _ = resume_sender.send(());
        }
    });
    let (routes, finished) = on_host(&lab.ns("hb"), move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let started = Instant::now();
            let golem = Golem::builder()
                .join(public.as_str())
                .port_mapping(false)
                .max_price(100)
                .min_providers(1)
                .wait(Duration::from_secs(60))
                .build()
                .await
                .expect("the provider behind NAT A found");
            eprintln!("provider found after {:?}", started.elapsed());
            let listed: Vec<String> = golem
                .provider_list()
                .iter()
                .map(|info| info.node.to_string())
                .collect();
            assert_eq!(
                listed,
                vec![provider.clone()],
                "only the provider behind NAT A is used"
            );
            let scene = scene_of(128, 96);
            let tiles = scene.tiles(32);
            let native = native_render(&scene, &tiles);
            let mut routes = Vec::new();
            let started = Instant::now();
            loop {
                let job = golem
                    .par_for(tiles.clone(), render)
                    .with(&scene)
                    .with_report();
                let (pixels, report) = tokio::time::timeout(JOB_WAIT, job)
                    .await
                    .expect("the job completes in time")
                    .expect("the job completes");
                assert!(pixels == native, "the picture differs from a native render");
                let route = report
                    .routes
                    .iter()
                    .find(|route| route.node.to_string() == provider)
                    .cloned()
                    .expect("a route to the provider");
                let direct = !route.relayed;
                eprintln!("job at {:?}: {route:?}", started.elapsed());
                routes.push(route);
                if direct || started.elapsed() > direct_within {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let last = routes.last().expect("a job ran");
            assert_eq!(
                !last.relayed, expect_direct,
                "the route to the provider within {direct_within:?}: {routes:?}"
            );
            let scene = scene_of(384, 288);
            let tiles = scene.tiles(16);
            let native = native_render(&scene, &tiles);
            // Early, and the job's progress waits for `mid_job` to be done (the rest of a job
            // this small would otherwise be in before it is), so most of the job is still to
            // come when the relay is gone.
            let early = Mutex::new(Some((early_sender, resume_receiver)));
            let job = golem.par_for(tiles.clone(), render).with(&scene).progress(
                move |settled, total| {
                    if settled * 10 >= total
                        && let Some((early, resume)) = early.lock().expect("lock").take()
                    {
                        let _ = early.send(());
                        let _ = resume.recv();
                    }
                },
            );
            let pixels = tokio::time::timeout(JOB_WAIT, job)
                .await
                .expect("the larger job completes in time")
                .expect("the larger job completes");
            let finished = Instant::now();
            eprintln!("the larger job completed");
            assert!(pixels == native, "the picture differs from a native render");
            let scene = scene_of(128, 96);
            let tiles = scene.tiles(32);
            let native = native_render(&scene, &tiles);
            let mut jobs = 0;
            while finished.elapsed() < then_for {
                let job = golem.par_for(tiles.clone(), render).with(&scene);
                let pixels = tokio::time::timeout(JOB_WAIT, job)
                    .await
                    .expect("a job after it completes in time")
                    .expect("a job after it completes");
                assert!(pixels == native, "the picture differs from a native render");
                jobs += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            eprintln!("{jobs} more jobs in the {then_for:?} after it");
            (routes, finished)
        })
    });
    waiter.join().expect("the waiting thread");
    let done_at = done_at.lock().expect("lock").expect("`mid_job` ran");
    assert!(
        done_at < finished,
        "`mid_job` ran after the job had finished"
    );
    routes
}

fn native_render(scene: &Scene, tiles: &[golem_examples::mandelbrot::Tile]) -> Vec<Vec<u8>> {
    tiles.iter().map(|tile| render(scene, *tile)).collect()
}

#[test]
fn a_provider_behind_one_nat_serves_a_requestor_behind_another_directly_and_survives_the_relay() {
    let Some(lab) = Lab::build("c", false) else {
        return;
    };
    let public = public_node(&lab);
    let provider = provider(&lab, &public);
    let node = provider.node().to_owned();
    let address = public.address.clone();
    // The relay (and bootstrap) node killed in the middle of the larger job, which still
    // completes over the direct path, as do the jobs after it.
    let routes = requestor(
        &lab,
        &address,
        &node,
        Duration::from_secs(30),
        true,
        move || drop(public),
        RELAY_GONE_FOR,
    );
    let last = routes.last().expect("a job ran");
    assert!(
        last.via.starts_with("198.51.100.2:"),
        "the direct path goes to router A's public address: {routes:?}"
    );
}

#[test]
fn behind_a_symmetric_nat_the_job_completes_through_the_relay() {
    let Some(lab) = Lab::build("s", true) else {
        return;
    };
    let public = public_node(&lab);
    let provider = provider(&lab, &public);
    let node = provider.node().to_owned();
    let routes = requestor(
        &lab,
        &public.address,
        &node,
        Duration::from_secs(8),
        false,
        || {},
        Duration::ZERO,
    );
    assert!(
        routes.iter().all(|route| route.relayed),
        "a direct path through a symmetric NAT: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .all(|route| route.via.contains("198.51.100.1:3340")),
        "relayed through the public node's relay: {routes:?}"
    );
}

#[test]
fn a_relay_that_stalls_mid_job_does_not_stop_a_direct_path() {
    let Some(lab) = Lab::build("t", false) else {
        return;
    };
    let public = Arc::new(public_node(&lab));
    let provider = provider(&lab, &public);
    let node = provider.node().to_owned();
    let stalled = Arc::clone(&public);
    // Frozen, not dead: its sockets stay open and answer nothing.
    let routes = requestor(
        &lab,
        &public.address,
        &node,
        Duration::from_secs(30),
        true,
        move || stalled.signal(Signal::STOP),
        RELAY_GONE_FOR,
    );
    assert!(!routes.last().expect("a job ran").relayed);
}
