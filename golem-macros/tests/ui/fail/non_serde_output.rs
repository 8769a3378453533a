pub struct Opaque(u32);

#[golem::task]
fn wrap(value: u32) -> Opaque {
    Opaque(value)
}

fn main() {}
