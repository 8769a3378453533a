//! Distributed rendering: a Mandelbrot image split into tiles, each tile a sandboxed subtask,
//! assembled into one PNG. The scene is the shared context, shipped once per provider.
//!
//! Run: `cargo run --release --example render [-- OUTPUT.png [WIDTH HEIGHT]]`
//! (writes `mandelbrot.png` by default). With `GOLEM_JOIN=NODE_ID@HOST:PORT`
//! the tiles run on the provider daemons of that network instead of in-process providers, and
//! each tile they return is checked by re-rendering 16 random pixels of it here.

use std::time::Instant;

use golem::Golem;
use golem_examples::mandelbrot::{Scene, render, spot_pixels};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let output = args.next().unwrap_or_else(|| "mandelbrot.png".into());
    let mut scene = Scene::default();
    if let (Some(width), Some(height)) = (args.next(), args.next()) {
        (scene.width, scene.height) = (width.parse()?, height.parse()?);
    }

    let joined = std::env::var("GOLEM_JOIN").ok();
    let golem = match &joined {
        Some(addr) => Golem::builder().join(addr).build().await?,
        None => Golem::local().await?,
    };
    let tiles = scene.tiles(64);
    println!(
        "rendering {}x{} in {} tiles on {} providers",
        scene.width,
        scene.height,
        tiles.len(),
        golem.providers()
    );
    let started = Instant::now();
    let mut job = golem
        .par_for(tiles.clone(), render)
        .with(&scene)
        .progress(|done, total| eprint!("\r{done}/{total} tiles"));
    if joined.is_some() {
        // Providers on a network are not trusted: spot-check each tile natively.
        let checked = scene.clone();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        job = job.verify_with(move |_, tile, rgb| spot_pixels(&checked, tile, rgb, 16, seed));
    }
    let (pixels, report) = job.with_report().await?;
    eprintln!();
    if joined.is_some() {
        for route in &report.routes {
            let how = if route.relayed {
                "relayed through"
            } else {
                "direct to"
            };
            println!("provider {}: {how} {}", route.node, route.via);
        }
    }
    for caught in &report.caught {
        println!("provider {} caught: {}", caught.node, caught.reason);
    }
    let image = scene.assemble(&tiles, &pixels);
    println!("rendered in {:.2?}", started.elapsed());

    let file = std::io::BufWriter::new(std::fs::File::create(&output)?);
    let mut encoder = png::Encoder::new(file, scene.width, scene.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&image)?;
    println!("wrote {output}");
    Ok(())
}
