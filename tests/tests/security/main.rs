//! What a local unprivileged user or a network peer can make the root agent do: each attack
//! found in review, reproduced against the real agent (as root, on loopback or from a network
//! namespace of the test's own, with bounded floods and a fixed number of connections), and
//! what must keep holding.

mod http_limits;
mod investigate_out;
mod keep;
mod markers;
mod network;
mod profiling;
