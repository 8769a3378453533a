//! Every accepted task shape compiles, and each task still runs natively.

use std::collections::BTreeMap;

use golem::Task;
use golem::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Scene {
    scale: u32,
}

/// A task with a context.
#[golem::task]
pub fn scaled(scene: &Scene, x: u32) -> u32 {
    scene.scale * x
}

#[golem::task]
fn unit_output(_x: u8) {}

#[golem::task]
fn tuple_pattern((a, b): (u32, u32)) -> u32 {
    a + b
}

#[golem::task]
pub(crate) fn fallible(text: String) -> Result<u32, String> {
    text.parse().map_err(|_| format!("not a number: {text}"))
}

#[golem::task]
fn collection(words: Vec<String>) -> BTreeMap<String, usize> {
    words.into_iter().map(|word| (word.clone(), word.len())).collect()
}

fn assert_task<T: Task>(_: T) {}

fn main() {
    assert_eq!(scaled(&Scene { scale: 3 }, 2), 6);
    unit_output(1);
    assert_eq!(tuple_pattern((1, 2)), 3);
    assert_eq!(fallible("4".into()), Ok(4));
    assert_eq!(collection(vec!["ab".into()])["ab"], 2);
    assert_task(scaled);
    assert_task(unit_output);
    assert_eq!(<scaled as Task>::NAME, "scaled");
    assert_eq!(format!("{scaled:?}"), "golem task `scaled`");
}
