//! Flow events from the kernel: decoding ([`decode`]: verdicts and connection ends; the ends of
//! idle connections come from the conntrack sweeper, `dataplane::ct_sweep`), attribution to
//! pods and policies ([`enrich`]), and the JSON-lines flow log ([`sink`], rotated by
//! [`rotate`]); the agent's
//! memory of recent flows ([`store`]) served on a unix socket ([`server`]) to
//! `enforcer flows` ([`client`]), which filters ([`filter`]) and prints them ([`table`]).

pub mod client;
pub mod decode;
pub mod enrich;
pub mod filter;
pub mod rotate;
pub mod server;
pub mod sink;
pub mod store;
pub mod table;
