//! Flow events from the kernel: decoding ([`decode`]: verdicts and connection ends, from the
//! ring buffer and from the conntrack sweeper), attribution to pods and policies ([`enrich`]),
//! the flow log's rotation ([`rotate`]); the agent's memory of recent flows ([`store`]) served
//! on a unix socket ([`server`]) to `enforcer flows` ([`client`]), which filters ([`filter`])
//! and prints them ([`table`]). Where the records go (the log, the store, metrics, detectors)
//! is the agent's wiring: `agent::flow_sink`.

pub mod client;
pub mod decode;
pub mod enrich;
pub mod filter;
pub mod rotate;
pub mod server;
pub mod store;
pub mod table;
