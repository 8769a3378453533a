//! Each example's job run in the sandbox against a native run of the same functions.

use golem::{Golem, Until};
use golem_examples::{kmeans, mandelbrot, monte_carlo, word_count};

async fn golem() -> Golem {
    Golem::builder()
        .providers(3)
        .build()
        .await
        .expect("local providers start")
}

#[tokio::test]
async fn rendered_image_is_byte_identical_to_native() {
    let golem = golem().await;
    let scene = mandelbrot::Scene {
        width: 320,
        height: 200,
        max_iterations: 500,
        ..mandelbrot::Scene::default()
    };
    let tiles = scene.tiles(48);
    let pixels = golem
        .par_for(tiles.clone(), mandelbrot::render)
        .with(&scene)
        .await
        .expect("render job");
    let sandboxed = scene.assemble(&tiles, &pixels);
    let native = mandelbrot::render_native(&scene, 48);
    assert_eq!(sandboxed.len(), 320 * 200 * 3);
    assert!(
        sandboxed == native,
        "sandboxed render differs from the native render"
    );
    // Not a blank image: the kernel did work.
    assert!(sandboxed.iter().filter(|&&byte| byte != 0).count() > sandboxed.len() / 4);
}

#[tokio::test]
async fn word_count_matches_native() {
    let golem = golem().await;
    let text = word_count::sample_text(30_000);
    let chunks = word_count::chunks(&text, 4096);
    assert!(chunks.len() > 10);
    assert_eq!(chunks.concat(), text, "chunks cover the text exactly");
    let counts = golem
        .map_reduce(
            chunks,
            word_count::count_words,
            word_count::Counts::new,
            word_count::merge,
        )
        .await
        .expect("word count job");
    assert_eq!(counts, word_count::count_words(text));
    // "people's" counts as two words, "people" and "s"; every other generated word as one.
    let apostrophes = counts.get("s").copied().unwrap_or(0);
    assert!(apostrophes > 0);
    assert_eq!(counts.values().sum::<u64>(), 30_000 + apostrophes);
}

#[tokio::test]
async fn kmeans_matches_native_round_for_round() {
    let golem = golem().await;
    let chunks = kmeans::sample_points(6, 2_000, 1_500);
    let init = kmeans::initial_centroids(&chunks, 6);
    let epsilon = 1e-12;
    let result = golem
        .iterate(
            init.clone(),
            async |golem, _round, centroids| {
                let partials = golem
                    .par_for(chunks.clone(), kmeans::assign)
                    .with(centroids)
                    .await?;
                Ok(kmeans::update(centroids, &partials))
            },
            Until::converged(
                move |previous: &Vec<kmeans::Point>, next: &Vec<kmeans::Point>| {
                    kmeans::shift(previous, next) < epsilon
                },
            )
            .max_rounds(30),
        )
        .await
        .expect("k-means job");
    let (native, rounds) = kmeans::run_native(&chunks, init, epsilon, 30);
    assert!(result.converged);
    assert_eq!(result.rounds, rounds);
    assert_eq!(result.state, native, "bit-identical centroids");
}

#[tokio::test]
async fn monte_carlo_is_reproducible_and_seedable() {
    let golem = golem().await;
    let run = |seed: Option<u64>| {
        let job = golem.map_reduce(
            vec![20_000u64; 16],
            monte_carlo::count_hits,
            || 0,
            |a, b| a + b,
        );
        let job = match seed {
            Some(seed) => job.seed(seed),
            None => job,
        };
        async move { job.await.expect("monte carlo job") }
    };
    let first = run(None).await;
    assert_eq!(first, run(None).await, "the same job gives the same hits");
    let reseeded = run(Some(1)).await;
    assert_ne!(first, reseeded, "another seed draws other points");
    assert_eq!(reseeded, run(Some(1)).await);
    let pi = monte_carlo::estimate(first, 320_000);
    assert!(
        (pi - std::f64::consts::PI).abs() < 0.02,
        "estimate {pi} is near π"
    );
    // The native function draws from the OS: same statistics, not the same stream.
    let native = monte_carlo::estimate(monte_carlo::count_hits(320_000), 320_000);
    assert!((native - pi).abs() < 0.03);
}
