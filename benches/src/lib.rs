//! Workloads shared by the criterion benches (`benches/sandbox.rs`) and the comparison table
//! (`benches/compare.rs`).
//!
//! * the render kernel: a Mandelbrot scene in tiles, run natively, with rayon, and in the
//!   sandbox on one thread under each engine setting ([`engine_variants`]);
//! * tiny tasks: `double(u64)`, to measure the fixed cost per subtask.

use std::sync::Arc;

use golem::Task;
use golem_examples::mandelbrot::{Scene, Tile, render};
use golem_runtime::node::subtask_seed;
use golem_runtime::sandbox::{
    Call, Context, Limits, PreparedModule, Sandbox, SandboxConfig, TaskExport,
};
use rayon::prelude::*;

/// The scene the render benches use: 512×384, up to 1,000 iterations per pixel.
pub fn scene() -> Scene {
    Scene {
        width: 512,
        height: 384,
        max_iterations: 1_000,
        ..Scene::default()
    }
}

/// The scene's tiles, 64×64.
pub fn tiles(scene: &Scene) -> Vec<Tile> {
    scene.tiles(64)
}

/// Renders every tile natively on this thread.
pub fn render_native(scene: &Scene, tiles: &[Tile]) -> Vec<Vec<u8>> {
    tiles.iter().map(|tile| render(scene, *tile)).collect()
}

/// Renders every tile natively with rayon on all cores.
pub fn render_rayon(scene: &Scene, tiles: &[Tile]) -> Vec<Vec<u8>> {
    tiles.par_iter().map(|tile| render(scene, *tile)).collect()
}

/// Engine settings compared by the benches, by name.
pub fn engine_variants() -> Vec<(&'static str, SandboxConfig)> {
    let base = SandboxConfig::with_instances(4);
    let with = |fuel: bool, deadline: bool, nan: bool| {
        let mut config = base.clone();
        config.fuel_metering = fuel;
        config.deadline_checks = deadline;
        config.nan_canonicalization = nan;
        config
    };
    vec![
        ("no metering", with(false, false, false)),
        ("deadline checks", with(false, true, false)),
        ("fuel", with(true, false, false)),
        ("fuel + deadline (default)", with(true, true, false)),
        (
            "fuel + deadline + NaN canonicalization",
            with(true, true, true),
        ),
    ]
}

/// One task of one module on a sandbox, called on this thread.
pub struct SandboxRun {
    sandbox: Sandbox,
    module: Arc<PreparedModule>,
    export: TaskExport,
    context: Context,
    inputs: Vec<Vec<u8>>,
    limits: Limits,
}

impl SandboxRun {
    /// Prepares task `T` over `items` with `context` on a sandbox built from `config`.
    pub fn new<T: Task>(
        config: SandboxConfig,
        _task: T,
        context: &T::Context,
        items: &[T::Input],
    ) -> Self {
        let sandbox = Sandbox::new(config).expect("engine");
        let bytes = T::module();
        let module = sandbox
            .prepare(bytes.hash(), bytes.bytes())
            .expect("the module compiles");
        let export = module.task(T::NAME).expect("the task is exported");
        Self {
            sandbox,
            module,
            export,
            context: Context::new(
                postcard::to_allocvec(context)
                    .expect("encode context")
                    .into(),
            ),
            inputs: items
                .iter()
                .map(|item| postcard::to_allocvec(item).expect("encode input"))
                .collect(),
            limits: Limits::default(),
        }
    }

    /// Runs every call under `limits` instead of the defaults.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The sandbox the calls run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Number of subtasks.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether there are no subtasks.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Runs subtask `index`, returning its encoded output.
    pub fn run_one(&self, index: usize) -> Vec<u8> {
        let call = Call {
            context: self.context.clone(),
            input: &self.inputs[index],
            seed: subtask_seed(&[0; 32], index as u64),
        };
        self.sandbox
            .run(&self.module, &self.export, call, &self.limits)
            .expect("the subtask runs")
            .output
    }

    /// Runs every subtask in order on this thread and decodes the outputs.
    pub fn decoded<O: serde::de::DeserializeOwned>(&self) -> Vec<O> {
        self.run_all()
            .iter()
            .map(|bytes| postcard::from_bytes(bytes).expect("decode output"))
            .collect()
    }

    /// Runs every subtask in order on this thread.
    pub fn run_all(&self) -> Vec<Vec<u8>> {
        (0..self.inputs.len())
            .map(|index| self.run_one(index))
            .collect()
    }
}

/// Memory figures of this process and machine, from `/proc` (Linux), in bytes.
pub mod memory {
    /// A field of `/proc/self/status` (`VmRSS`, `VmHWM`, `RssAnon`...), or 0 when unknown.
    pub fn status(field: &str) -> u64 {
        kib_field("/proc/self/status", field)
    }

    /// Memory in shared memory files on the machine (`Shmem` of `/proc/meminfo`): where
    /// snapshots keep their images.
    pub fn shmem() -> u64 {
        kib_field("/proc/meminfo", "Shmem")
    }

    /// Starts the peak resident set (`VmHWM`) over from the current one.
    pub fn reset_peak() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    fn kib_field(path: &str, field: &str) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let value = line.strip_prefix(field)?.strip_prefix(':')?;
                    value.split_whitespace().next()?.parse::<u64>().ok()
                })
            })
            .map_or(0, |kib| kib * 1024)
    }
}
