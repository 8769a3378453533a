//! Content-addressed blobs over real QUIC: a shared context crosses the wire once per provider.

use golem::Golem;
use golem_fixture::pick;

#[test]
fn a_shared_context_crosses_the_wire_once_per_provider_and_not_again() {
    let golem = Golem::builder()
        .providers(4)
        .build_blocking()
        .expect("providers");
    assert_eq!(golem.providers(), 4);
    let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
    let context_bytes = postcard::to_allocvec(&data).expect("encode").len() as u64;
    let module_bytes = <pick as golem::Task>::module().bytes().len() as u64;
    let indices: Vec<u64> = (0..1_000).map(|i| i * 9_973).collect();
    let expected: Vec<u8> = indices.iter().map(|i| pick(&data, *i)).collect();

    let before = golem.transfer_stats();
    let picked = golem
        .par_for(indices.clone(), pick)
        .with(&data)
        .run()
        .expect("first job");
    assert_eq!(picked, expected);
    let first = golem.transfer_stats();
    let sent = first.blob_bytes_sent - before.blob_bytes_sent;
    eprintln!(
        "first job: {} blobs, {sent} bytes (context {context_bytes}, module {module_bytes})",
        first.blobs_sent - before.blobs_sent
    );
    // Module and context once to each of the 4 providers, never once per subtask.
    assert_eq!(first.blobs_sent - before.blobs_sent, 8);
    assert_eq!(sent, 4 * (context_bytes + module_bytes));

    // Fewer subtasks suffice to show that nothing is sent again: every one of them would need
    // the context.
    let again = golem
        .par_for(indices[..100].to_vec(), pick)
        .with(&data)
        .run()
        .expect("second job");
    assert_eq!(again, expected[..100]);
    let second = golem.transfer_stats();
    assert_eq!(second, first, "the second job sent blobs again");
}
