//! Scheduler: request admission, per-request sub-structure choice, token-budget batching
//! and the latency control loop (see DESIGN.md "Serving"). Not built yet: the foundation
//! issue only sets up the crate so the workspace has its final shape.
