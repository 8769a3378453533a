#[golem::task]
fn bump(counter: &mut u32, x: u32) -> u32 {
    *counter += x;
    *counter
}

fn main() {}
