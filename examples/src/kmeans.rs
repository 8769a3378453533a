//! k-means clustering with `iterate`: each round assigns points to the nearest centroid in the
//! sandbox (the centroids are the shared context), then moves the centroids on the requestor;
//! the round's results decide whether there is another.

/// A point in the plane.
pub type Point = [f64; 2];

/// Per-cluster sums of the points assigned to it: `(sum of x, sum of y, count)`.
pub type Sums = Vec<(f64, f64, u64)>;

/// Assigns each point of `chunk` to its nearest centroid and sums them per cluster.
#[golem::task]
pub fn assign(centroids: &Vec<Point>, chunk: Vec<Point>) -> Sums {
    let mut sums = vec![(0.0, 0.0, 0u64); centroids.len()];
    for point in chunk {
        let nearest = nearest(centroids, point);
        sums[nearest].0 += point[0];
        sums[nearest].1 += point[1];
        sums[nearest].2 += 1;
    }
    sums
}

fn nearest(centroids: &[Point], point: Point) -> usize {
    let distance =
        |c: &Point| (c[0] - point[0]) * (c[0] - point[0]) + (c[1] - point[1]) * (c[1] - point[1]);
    let mut best = 0;
    for (index, centroid) in centroids.iter().enumerate() {
        if distance(centroid) < distance(&centroids[best]) {
            best = index;
        }
    }
    best
}

/// New centroids from the per-chunk sums, added in chunk order; an empty cluster keeps its
/// centroid.
pub fn update(centroids: &[Point], partials: &[Sums]) -> Vec<Point> {
    centroids
        .iter()
        .enumerate()
        .map(|(cluster, old)| {
            let (x, y, n) = partials.iter().fold((0.0, 0.0, 0), |(x, y, n), sums| {
                (
                    x + sums[cluster].0,
                    y + sums[cluster].1,
                    n + sums[cluster].2,
                )
            });
            if n == 0 {
                *old
            } else {
                [x / n as f64, y / n as f64]
            }
        })
        .collect()
}

/// Largest distance any centroid moved, squared.
pub fn shift(previous: &[Point], next: &[Point]) -> f64 {
    previous
        .iter()
        .zip(next)
        .map(|(a, b)| (a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1]))
        .fold(0.0, f64::max)
}

/// `clusters` Gaussian-ish blobs of `per_cluster` points each, from a fixed generator, split
/// into chunks of `chunk` points.
pub fn sample_points(clusters: usize, per_cluster: usize, chunk: usize) -> Vec<Vec<Point>> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut points = Vec::with_capacity(clusters * per_cluster);
    for cluster in 0..clusters {
        let centre = [(cluster % 4) as f64 * 10.0, (cluster / 4) as f64 * 10.0];
        for _ in 0..per_cluster {
            // The sum of three uniforms is bell-shaped enough for a demo.
            let dx = uniform() + uniform() + uniform() - 1.5;
            let dy = uniform() + uniform() + uniform() - 1.5;
            points.push([centre[0] + 2.0 * dx, centre[1] + 2.0 * dy]);
        }
    }
    points.chunks(chunk.max(1)).map(<[Point]>::to_vec).collect()
}

/// `k` initial centroids: the first point of `k` evenly spaced chunks.
pub fn initial_centroids(chunks: &[Vec<Point>], k: usize) -> Vec<Point> {
    let stride = (chunks.len() / k.max(1)).max(1);
    chunks
        .iter()
        .step_by(stride)
        .filter_map(|chunk| chunk.first().copied())
        .take(k)
        .collect()
}

/// The same clustering run natively, round for round, for comparison.
pub fn run_native(
    chunks: &[Vec<Point>],
    mut centroids: Vec<Point>,
    epsilon: f64,
    max_rounds: u32,
) -> (Vec<Point>, u32) {
    for round in 0..max_rounds {
        let partials: Vec<Sums> = chunks
            .iter()
            .map(|chunk| assign(&centroids, chunk.clone()))
            .collect();
        let next = update(&centroids, &partials);
        let done = shift(&centroids, &next) < epsilon;
        centroids = next;
        if done {
            return (centroids, round + 1);
        }
    }
    (centroids, max_rounds)
}
