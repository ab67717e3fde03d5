//! Flow events from the kernel: decoding ([`decode`]), attribution to pods and policies
//! ([`enrich`]), and the JSON-lines flow log ([`sink`], rotated by [`rotate`]); the agent's
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
