//! End-to-end tests of golem live in `tests/` beside this file; this library is empty.
