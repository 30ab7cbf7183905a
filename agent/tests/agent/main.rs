//! Integration tests of the agent against real servers on loopback.

// Test helpers fail loudly: a panic is the right report here.
#![allow(clippy::unwrap_used)]

mod cli;
mod path;
mod path_mtu;
mod probe;
mod probe_options;
