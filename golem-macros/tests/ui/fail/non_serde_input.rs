pub struct Opaque(u32);

#[golem::task]
fn unwrap(value: Opaque) -> u32 {
    value.0
}

fn main() {}
