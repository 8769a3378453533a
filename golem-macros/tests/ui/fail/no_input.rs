#[golem::task]
fn constant() -> u32 {
    4
}

fn main() {}
