//! Integration tests of the agent against real servers on loopback.

mod cli;
mod probe;
