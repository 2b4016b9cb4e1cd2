//! Integration tests: one binary, one module per area. Real sockets, real pseudo-terminals,
//! paused tokio time where the test is about time.

mod records;
mod support;
