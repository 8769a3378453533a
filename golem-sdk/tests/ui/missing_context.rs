#[golem::task]
fn scale(factor: &u32, x: u32) -> u32 {
    factor * x
}

fn main() {
    let golem = golem::Golem::local_blocking().unwrap();
    // The task takes a context, and `.with(&context)` is missing.
    let _ = golem.par_for([1, 2], scale).run();
}
