//! The flags that set [`ProviderLimits`] and the sandbox's compile limits: what peers may make
//! this provider hold and spend.

use std::time::Duration;

use clap::Args;
use golem_runtime::node::ProviderLimits;
use golem_runtime::sandbox::SandboxConfig;

use crate::flavor::{parse_bytes, parse_millis};

/// What peers may make this provider hold. The defaults are [`ProviderLimits::default`].
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits on what peers may make this provider hold")]
pub(crate) struct LimitArgs {
    /// Connections served at once; more are closed as busy.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_connections: usize,

    /// Connections served at once from one node id.
    #[arg(long, default_value_t = 4, value_name = "N")]
    max_connections_per_peer: usize,

    /// Connections served at once from one IP address (direct connections).
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_connections_per_ip: usize,

    /// Batches held at once across every connection (waiting for blobs, queued, running, or
    /// done with outputs not taken yet); more are given back to their requestor to send
    /// elsewhere.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_batches: usize,

    /// Memory of the batches held at once across every connection, and of the outputs of
    /// finished batches their requestors have not taken yet.
    #[arg(long, default_value = "512M", value_name = "SIZE", value_parser = parse_size)]
    max_batch_memory: usize,

    /// Batches held at once for one connection.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_batches_per_connection: usize,

    /// Memory of the batches held at once for one connection; as much again for the outputs
    /// of its finished batches its requestor has not taken yet (past it a batch is given back,
    /// but one batch's outputs are always kept).
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    max_batch_memory_per_connection: usize,

    /// Largest blob (module, shared context, large input) accepted.
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = parse_bytes)]
    max_blob: u64,

    /// Bytes of blobs being received at once across every connection; a blob waits for room
    /// before it is read, and room that frees goes to the requestor holding least.
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = parse_bytes)]
    blob_receive_memory: u64,

    /// How long a batch waits for its blobs, and a blob may take to arrive.
    #[arg(long, default_value = "60s", value_name = "TIME", value_parser = parse_duration)]
    blob_wait: Duration,

    /// Bytes of modules and contexts kept in memory; older ones are read back from DIR/blobs
    /// (or fetched again with --no-cache) when a job needs them.
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = parse_size)]
    blob_memory: usize,

    /// How long a reply may wait for its requestor to take it before the connection is closed.
    #[arg(long, default_value = "30s", value_name = "TIME", value_parser = parse_duration)]
    reply_timeout: Duration,

    /// Bytes of blobs kept in DIR/blobs; the oldest are deleted first.
    #[arg(long, default_value = "16G", value_name = "SIZE", value_parser = parse_bytes)]
    blob_disk: u64,

    /// Bytes of compiled modules kept in DIR/compiled; the oldest are deleted first.
    #[arg(long, default_value = "4G", value_name = "SIZE", value_parser = parse_bytes)]
    compiled_disk: u64,

    /// Free space left on the disk of DIR: no blob or compiled module is written into it, so
    /// the books (DIR/books.redb) always have room to be written.
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = parse_bytes)]
    disk_reserve: u64,

    /// Compiled modules kept in memory, ready to run; the oldest is dropped past it (and read
    /// back from DIR/compiled when a job needs it).
    #[arg(long, default_value_t = 256, value_name = "N")]
    prepared_modules: usize,

    /// Modules compiled at once (one thread each); others wait their turn.
    #[arg(long, default_value_t = 1, value_name = "N")]
    compile_threads: usize,

    /// How long compiling one module may take before it is refused (and remembered as refused).
    #[arg(long, default_value = "30s", value_name = "TIME", value_parser = parse_duration)]
    compile_timeout: Duration,

    /// Bytes of context snapshots kept in memory (a job's shared context decoded once, its
    /// subtasks started from it); the least recently used is dropped past it, and a snapshot
    /// over half of it is not made (its subtasks decode the context each).
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = parse_size)]
    snapshot_memory: usize,
}

impl LimitArgs {
    /// Sets the sandbox's own limits: compile threads and time, compiled modules, snapshots.
    pub(crate) fn apply(&self, sandbox: &mut SandboxConfig) {
        sandbox.compile_threads = self.compile_threads;
        sandbox.compile_timeout = self.compile_timeout;
        sandbox.compiled_cache_bytes = self.compiled_disk;
        sandbox.disk_reserve_bytes = self.disk_reserve;
        sandbox.max_prepared_modules = self.prepared_modules;
        sandbox.max_snapshot_bytes = self.snapshot_memory;
    }

    pub(crate) fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            connections: self.max_connections,
            connections_per_peer: self.max_connections_per_peer,
            connections_per_ip: self.max_connections_per_ip,
            batches_per_connection: self.max_batches_per_connection,
            batch_bytes_per_connection: self.max_batch_memory_per_connection,
            batches: self.max_batches,
            batch_bytes: self.max_batch_memory,
            max_blob_bytes: self.max_blob,
            blob_receive_bytes: self.blob_receive_memory,
            blob_wait: self.blob_wait,
            blob_memory_bytes: self.blob_memory,
            reply_timeout: self.reply_timeout,
            blob_disk_bytes: self.blob_disk,
            disk_reserve_bytes: self.disk_reserve,
        }
    }
}

fn parse_size(text: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(text)?).map_err(|_| format!("`{text}` is too large"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_millis(text).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn the_flags_default_to_the_library_defaults_and_each_sets_its_limit() {
        let flags = Flags::parse_from(["golem-provider"]).limits;
        let defaults = flags.limits();
        assert_eq!(defaults, ProviderLimits::default());
        let mut sandbox = SandboxConfig::default();
        let sandbox_limits = |sandbox: &SandboxConfig| {
            (
                sandbox.compile_threads,
                sandbox.compile_timeout,
                sandbox.compiled_cache_bytes,
                sandbox.disk_reserve_bytes,
                sandbox.max_prepared_modules,
            )
        };
        let before = sandbox_limits(&sandbox);
        flags.apply(&mut sandbox);
        assert_eq!(sandbox_limits(&sandbox), before);
        let set = Flags::parse_from([
            "golem-provider",
            "--max-connections=9",
            "--max-batch-memory=1M",
            "--blob-wait=5s",
        ])
        .limits
        .limits();
        assert_eq!(set.connections, 9);
        assert_eq!(set.batch_bytes, 1 << 20);
        assert_eq!(set.blob_wait, Duration::from_secs(5));
        assert_eq!(set.connections_per_peer, defaults.connections_per_peer);
    }
}
