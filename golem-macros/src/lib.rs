//! Procedural macros of golem. Use them through the `golem-sdk` crate (`golem::task`), which
//! documents them; this crate holds only the code generation.

mod task;

/// Marks a plain function as a golem task. See `golem::task` for the full documentation.
#[proc_macro_attribute]
pub fn task(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    task::expand(args.into(), item.into()).into()
}
