//! Replay: traffic traces, the replay client and reports comparing configurations.
//! Not built yet: the foundation issue only sets up the crate.
