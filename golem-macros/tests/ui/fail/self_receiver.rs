struct Renderer;

impl Renderer {
    #[golem::task]
    fn render(&self, x: u32) -> u32 {
        x
    }
}

fn main() {}
