#[golem::task]
fn add(context: &u32, a: u32, b: u32) -> u32 {
    context + a + b
}

fn main() {}
