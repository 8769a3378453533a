//! Support for the code `#[golem::task]` generates (`golem::__private`). Not a public API.

#[cfg(target_arch = "wasm32")]
pub mod guest;

/// Compile-time check that `T` may cross the sandbox boundary; reported at the user's type.
pub const fn assert_task_data<T: crate::TaskData>() {}

/// How the requestor decodes an output a provider sent back (for the fuzz targets).
#[cfg(all(feature = "runtime", not(target_arch = "wasm32")))]
pub use crate::par_for::decode_output;
