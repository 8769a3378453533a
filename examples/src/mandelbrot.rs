//! A Mandelbrot tile renderer: the scene is the shared context, each tile a subtask.
//!
//! Only `+ - * /` on `f64` and integer colour mapping are used, so the sandboxed render is
//! byte-identical to the native one.

use golem::prelude::*;

/// What to render: image size, the view on the complex plane and the iteration cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Real part of the image centre.
    pub center_re: f64,
    /// Imaginary part of the image centre.
    pub center_im: f64,
    /// Width of the view on the complex plane.
    pub view_width: f64,
    /// Iteration cap per pixel.
    pub max_iterations: u32,
}

impl Default for Scene {
    fn default() -> Self {
        Self {
            width: 1024,
            height: 768,
            center_re: -0.743_643_887_037_151,
            center_im: 0.131_825_904_205_33,
            view_width: 0.000_05,
            max_iterations: 2_000,
        }
    }
}

/// A rectangle of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tile {
    /// Left column.
    pub x0: u32,
    /// Top row.
    pub y0: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Scene {
    /// Splits the image into tiles of at most `size` × `size` pixels, row by row.
    pub fn tiles(&self, size: u32) -> Vec<Tile> {
        let size = size.max(1);
        let mut tiles = Vec::new();
        for y0 in (0..self.height).step_by(size as usize) {
            for x0 in (0..self.width).step_by(size as usize) {
                tiles.push(Tile {
                    x0,
                    y0,
                    width: size.min(self.width - x0),
                    height: size.min(self.height - y0),
                });
            }
        }
        tiles
    }

    /// Copies rendered tiles (RGB, row-major) into one RGB image.
    pub fn assemble(&self, tiles: &[Tile], pixels: &[Vec<u8>]) -> Vec<u8> {
        let mut image = vec![0u8; self.width as usize * self.height as usize * 3];
        for (tile, rgb) in tiles.iter().zip(pixels) {
            let row_bytes = tile.width as usize * 3;
            for row in 0..tile.height as usize {
                let source = &rgb[row * row_bytes..(row + 1) * row_bytes];
                let start = ((tile.y0 as usize + row) * self.width as usize + tile.x0 as usize) * 3;
                image[start..start + row_bytes].copy_from_slice(source);
            }
        }
        image
    }
}

/// Renders one tile of `scene` as RGB bytes, row-major.
#[golem::task]
pub fn render(scene: &Scene, tile: Tile) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(tile.width as usize * tile.height as usize * 3);
    for y in tile.y0..tile.y0 + tile.height {
        for x in tile.x0..tile.x0 + tile.width {
            rgb.extend_from_slice(&scene.pixel(x, y));
        }
    }
    rgb
}

impl Scene {
    /// The colour of pixel (`x`, `y`).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let step = self.view_width / f64::from(self.width);
        let left = self.center_re - self.view_width / 2.0;
        let top = self.center_im + step * f64::from(self.height) / 2.0;
        let re = left + f64::from(x) * step;
        let im = top - f64::from(y) * step;
        colour(
            escape_time(re, im, self.max_iterations),
            self.max_iterations,
        )
    }
}

/// A cheap check of a rendered tile, for [`ParFor::verify_with`](golem::ParFor::verify_with):
/// the size must be right and `samples` pixels, chosen from `seed` and the tile, rendered
/// here must match. A provider cannot tell which pixels are looked at, so one that fills in
/// tiles without rendering them is caught.
pub fn spot_pixels(
    scene: &Scene,
    tile: &Tile,
    rgb: &[u8],
    samples: u32,
    seed: u64,
) -> Result<(), String> {
    let expected = tile.width as usize * tile.height as usize * 3;
    if rgb.len() != expected {
        return Err(format!("{} bytes for a tile of {expected}", rgb.len()));
    }
    let mut state = seed ^ (u64::from(tile.x0) << 32 | u64::from(tile.y0));
    for _ in 0..samples.min(tile.width * tile.height) {
        state = splitmix64(state);
        let dx = (state % u64::from(tile.width)) as u32;
        let dy = ((state >> 32) % u64::from(tile.height)) as u32;
        let at = (dy as usize * tile.width as usize + dx as usize) * 3;
        let (x, y) = (tile.x0 + dx, tile.y0 + dy);
        if rgb[at..at + 3] != scene.pixel(x, y) {
            return Err(format!("pixel ({x}, {y}) is not the scene's"));
        }
    }
    Ok(())
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Iterations before `z² + c` leaves the radius-2 disc, or `max` if it never does.
pub fn escape_time(re: f64, im: f64, max: u32) -> u32 {
    let (mut x, mut y) = (0.0f64, 0.0f64);
    let mut iteration = 0;
    while iteration < max && x * x + y * y <= 4.0 {
        let next_x = x * x - y * y + re;
        y = 2.0 * x * y + im;
        x = next_x;
        iteration += 1;
    }
    iteration
}

/// A cyclic palette over the iteration count; points inside the set are black.
fn colour(iterations: u32, max: u32) -> [u8; 3] {
    if iterations >= max {
        return [0, 0, 0];
    }
    let t = (iterations * 7) % 768;
    let ramp = |offset: u32| -> u8 {
        let phase = (t + offset) % 768;
        let v = if phase < 256 {
            phase
        } else if phase < 512 {
            511 - phase
        } else {
            0
        };
        v as u8
    };
    [ramp(0), ramp(256), ramp(512)]
}

/// The whole image rendered natively, tile by tile, for comparison with a sandboxed run.
pub fn render_native(scene: &Scene, tile_size: u32) -> Vec<u8> {
    let tiles = scene.tiles(tile_size);
    let pixels: Vec<Vec<u8>> = tiles.iter().map(|tile| render(scene, *tile)).collect();
    scene.assemble(&tiles, &pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_pixels_accepts_a_true_tile_and_rejects_a_filled_in_one() {
        let scene = Scene {
            width: 128,
            height: 96,
            max_iterations: 200,
            ..Scene::default()
        };
        let tile = scene.tiles(32)[5];
        let rgb = render(&scene, tile);
        assert_eq!(spot_pixels(&scene, &tile, &rgb, 16, 7), Ok(()));
        assert!(spot_pixels(&scene, &tile, &rgb[3..], 16, 7).is_err());
        let filled = vec![0u8; rgb.len()];
        assert_ne!(filled, rgb, "the tile is not all black");
        assert!(spot_pixels(&scene, &tile, &filled, 16, 7).is_err());
    }
}
