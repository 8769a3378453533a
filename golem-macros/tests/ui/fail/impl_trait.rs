#[golem::task]
fn sum(items: impl IntoIterator<Item = u32>) -> u32 {
    items.into_iter().sum()
}

fn main() {}
