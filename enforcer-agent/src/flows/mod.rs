//! Flow events from the kernel: decoding ([`decode`]), attribution to pods and policies
//! ([`enrich`]), and the JSON-lines flow log ([`sink`]).

pub mod decode;
pub mod enrich;
pub mod sink;
