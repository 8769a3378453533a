//! Tasks of the golem examples, and native reference versions of each job.
//!
//! The runnable programs are in `examples/examples/`; the tasks are here because golem builds the
//! WebAssembly module from a crate's library target.

pub mod kmeans;
pub mod mandelbrot;
pub mod monte_carlo;
pub mod word_count;
